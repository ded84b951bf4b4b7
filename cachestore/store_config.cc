#include "cachestore/store_config.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "yaml-cpp/yaml.h"

namespace kvtier::cachestore {

absl::StatusOr<StoreConfig> LoadStoreConfig(const std::string& path) {
  StoreConfig c;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  if (!root.IsMap())
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": not a map"));
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      auto bytes = [&]() -> absl::StatusOr<uint64_t> { return ParseBytes(v.as<std::string>()); };
      auto set_bytes = [&](uint64_t* out) -> absl::Status {
        auto b = bytes();
        if (!b.ok())
          return absl::InvalidArgumentError(absl::StrCat(key, ": ", b.status().message()));
        *out = *b;
        return absl::OkStatus();
      };
      absl::Status s;
      if (key == "listen") {
        c.listen = v.as<std::string>();
      } else if (key == "metrics_listen") {
        c.metrics_listen = v.as<std::string>();
      } else if (key == "pool_bytes") {
        s = set_bytes(&c.pool_bytes);
      } else if (key == "slot_bytes") {
        s = set_bytes(&c.store.slot_bytes);
      } else if (key == "spill_dir") {
        c.spill_dir = v.as<std::string>();
      } else if (key == "spill_capacity_bytes") {
        s = set_bytes(&c.store.spill_capacity_bytes);
      } else if (key == "spill_min_hits") {
        c.store.spill_min_hits = v.as<uint32_t>();
      } else if (key == "spill_on_shutdown") {
        c.spill_on_shutdown = v.as<bool>();
      } else if (key == "lease_timeout_ms") {
        c.store.lease_timeout = absl::Milliseconds(v.as<int64_t>());
      } else if (key == "reservation_timeout_ms") {
        c.store.reservation_timeout = absl::Milliseconds(v.as<int64_t>());
      } else if (key == "max_batch_keys") {
        c.store.max_batch_keys = v.as<uint32_t>();
      } else if (key == "log_level") {
        c.log_level = v.as<std::string>();
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("config ", path, ": unknown key '", key, "'"));
      }
      if (!s.ok())
        return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", s.message()));
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  return c;
}

absl::Status FinalizeStoreConfig(StoreConfig* c) {
  StoreOptions& o = c->store;
  if (o.slot_bytes < 4096) {
    return absl::InvalidArgumentError(absl::StrCat("slot_bytes ", o.slot_bytes, " < 4 KiB"));
  }
  o.slot_count = c->pool_bytes / o.slot_bytes;
  if (o.slot_count == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("pool_bytes ", c->pool_bytes, " holds no slot of ", o.slot_bytes, " bytes"));
  }
  if (o.max_batch_keys == 0) return absl::InvalidArgumentError("max_batch_keys must be > 0");
  if (o.lease_timeout <= absl::ZeroDuration() || o.reservation_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeouts must be positive");
  }
  if (!c->spill_dir.empty() && o.spill_capacity_bytes < o.slot_bytes) {
    return absl::InvalidArgumentError(
        "spill_dir is set but spill_capacity_bytes holds no block; set spill_capacity_bytes");
  }
  return absl::OkStatus();
}

}  // namespace kvtier::cachestore
