#include "worker/worker_options.h"

#include <filesystem>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/parse_bytes.h"
#include "common/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace kvtier::worker {
namespace {

absl::Status CheckHostPort(absl::string_view field, const std::string& hp) {
  const size_t colon = hp.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(hp).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", hp, "' is not host:port with a port in [0, 65535]"));
  }
  return absl::OkStatus();
}

absl::Status Positive(absl::string_view field, int64_t v) {
  if (v > 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(field, " must be > 0, got ", v));
}

}  // namespace

WorkerOptions DefaultWorkerOptions(absl::string_view role) {
  WorkerOptions o;
  o.listen = role == "decode" ? "127.0.0.1:50062" : "127.0.0.1:50061";
  return o;
}

absl::StatusOr<WorkerOptions> LoadWorkerOptions(const std::string& path, WorkerOptions c) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  if (root.IsNull()) return c;  // an empty file
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": not a map"));
  }
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      if (key == "model_dir") {
        c.model_dir = v.as<std::string>();
      } else if (key == "backend") {
        c.backend = v.as<std::string>();
      } else if (key == "listen") {
        c.listen = v.as<std::string>();
      } else if (key == "stores") {
        c.stores.clear();
        if (v.IsSequence()) {
          for (const auto& s : v) c.stores.push_back(s.as<std::string>());
        } else if (!v.IsNull()) {
          c.stores.push_back(v.as<std::string>());
        }
      } else if (key == "store_rpc_timeout_ms") {
        c.store_rpc_timeout_ms = v.as<int64_t>();
      } else if (key == "store_retry_after_ms") {
        c.store_retry_after_ms = v.as<int64_t>();
      } else if (key == "kv_cache_bytes") {
        absl::StatusOr<uint64_t> b = ParseBytes(v.as<std::string>());
        if (!b.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat("config ", path, ": kv_cache_bytes: ", b.status().message()));
        }
        c.kv_cache_bytes = static_cast<int64_t>(*b);
      } else if (key == "block_tokens") {
        c.block_tokens = v.as<int>();
      } else if (key == "max_batch_tokens") {
        c.max_batch_tokens = v.as<int>();
      } else if (key == "max_batch_seqs") {
        c.max_batch_seqs = v.as<int>();
      } else if (key == "threads") {
        c.threads = v.as<int>();
      } else if (key == "model_name") {
        c.model_name = v.as<std::string>();
      } else if (key == "ready_file") {
        c.ready_file = v.as<std::string>();
      } else if (key == "log_level") {
        c.log_level = v.as<std::string>();
      } else if (key == "max_queued_requests") {
        c.max_queued_requests = v.as<int>();
      } else if (key == "default_max_tokens") {
        c.default_max_tokens = v.as<int>();
      } else if (key == "keep_blocks") {
        c.keep_blocks = v.as<bool>();
      } else if (key == "store_copy_threads") {
        c.store_copy_threads = v.as<int>();
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("config ", path, ": unknown key '", key, "'"));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  return c;
}

absl::Status FinalizeWorkerOptions(WorkerOptions* o) {
  if (o->model_dir.empty()) return absl::InvalidArgumentError("model_dir is required");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(std::filesystem::path(o->model_dir) / "config.json", ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model_dir: '", o->model_dir, "' has no config.json"));
  }
  if (!engine::ParseBackend(o->backend).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("backend must be 'cpu' or 'cuda', got '", o->backend, "'"));
  }
  KVTIER_RETURN_IF_ERROR(CheckHostPort("listen", o->listen));
  for (const std::string& s : o->stores) {
    KVTIER_RETURN_IF_ERROR(CheckHostPort("stores", s));
  }
  KVTIER_RETURN_IF_ERROR(Positive("store_rpc_timeout_ms", o->store_rpc_timeout_ms));
  KVTIER_RETURN_IF_ERROR(Positive("store_retry_after_ms", o->store_retry_after_ms));
  KVTIER_RETURN_IF_ERROR(Positive("kv_cache_bytes", o->kv_cache_bytes));
  KVTIER_RETURN_IF_ERROR(Positive("block_tokens", o->block_tokens));
  KVTIER_RETURN_IF_ERROR(Positive("max_batch_tokens", o->max_batch_tokens));
  KVTIER_RETURN_IF_ERROR(Positive("max_batch_seqs", o->max_batch_seqs));
  KVTIER_RETURN_IF_ERROR(Positive("max_queued_requests", o->max_queued_requests));
  KVTIER_RETURN_IF_ERROR(Positive("default_max_tokens", o->default_max_tokens));
  if (o->store_copy_threads < 0 || o->store_copy_threads > 64) {
    return absl::InvalidArgumentError("store_copy_threads must be in [0, 64]");
  }
  if (o->max_batch_seqs >= o->max_batch_tokens) {
    // Every running sequence's decode token goes into one Forward, and prefill chunks need
    // room next to them.
    return absl::InvalidArgumentError(absl::StrCat("max_batch_seqs (", o->max_batch_seqs,
                                                   ") must be < max_batch_tokens (",
                                                   o->max_batch_tokens, ")"));
  }
  if (o->threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 0, got ", o->threads));
  }
  static const char* const kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  bool level_ok = false;
  for (const char* l : kLevels) level_ok |= o->log_level == l;
  if (!level_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log_level must be one of ", absl::StrJoin(kLevels, "|"), ", got '", o->log_level, "'"));
  }
  if (o->model_name.empty()) {
    std::filesystem::path p(o->model_dir);
    if (!p.has_filename()) p = p.parent_path();  // "dir/" → "dir"
    o->model_name = p.filename().string();
  }
  return absl::OkStatus();
}

engine::EngineOptions ToEngineOptions(const WorkerOptions& o) {
  engine::EngineOptions e;
  e.backend = engine::ParseBackend(o.backend).value_or(engine::BackendKind::kCpu);
  e.block_tokens = o.block_tokens;
  e.kv_cache_bytes = o.kv_cache_bytes;
  e.max_batch_tokens = o.max_batch_tokens;
  e.max_batch_seqs = o.max_batch_seqs;
  e.num_threads = o.threads;
  return e;
}

StoreClientOptions ToStoreClientOptions(const WorkerOptions& o) {
  StoreClientOptions s;
  s.stores = o.stores;
  s.rpc_timeout = absl::Milliseconds(o.store_rpc_timeout_ms);
  s.retry_after = absl::Milliseconds(o.store_retry_after_ms);
  s.copy_threads = o.store_copy_threads;
  return s;
}

void WorkerFlags::Register(CLI::App& app) {
  app_ = &app;
  app.add_option("--config", config_path_, "YAML config file (flags override it)");
  app.add_option("--model-dir", flags_.model_dir, "model directory (config.json + safetensors)");
  app.add_option("--backend", flags_.backend, "cpu | cuda");
  app.add_option("--listen", flags_.listen, "gRPC host:port (port 0: any free port)");
  app.add_option("--store", flags_.stores, "store node host:port (repeat for several)");
  app.add_option("--store-rpc-timeout-ms", flags_.store_rpc_timeout_ms,
                 "deadline of each store control call");
  app.add_option("--store-retry-after-ms", flags_.store_retry_after_ms,
                 "how long a failed store node is skipped");
  app.add_option("--kv-cache-bytes", kv_cache_bytes_, "KV cache memory, e.g. 256MiB");
  app.add_option("--block-tokens", flags_.block_tokens, "tokens per block");
  app.add_option("--max-batch-tokens", flags_.max_batch_tokens, "most tokens per forward call");
  app.add_option("--max-batch-seqs", flags_.max_batch_seqs, "most sequences per forward call");
  app.add_option("--threads", flags_.threads, "CPU backend threads (0: all cores)");
  app.add_option("--model-name", flags_.model_name, "name reported in WorkerInfo");
  app.add_option("--ready-file", flags_.ready_file, "write {grpc_port, pid} when serving");
  app.add_option("--log-level", flags_.log_level, "trace|debug|info|warn|error");
  app.add_option("--max-queued-requests", flags_.max_queued_requests,
                 "decode: most requests waiting for admission");
  app.add_option("--default-max-tokens", flags_.default_max_tokens,
                 "decode: max_tokens of requests that leave it 0");
  app.add_option("--keep-blocks", flags_.keep_blocks,
                 "decode: keep finished requests' blocks as a first tier (true|false)");
  app.add_option("--store-copy-threads", flags_.store_copy_threads,
                 "threads copying blocks to and from a same-host store (0: auto)");
}

absl::StatusOr<WorkerOptions> WorkerFlags::Resolve() const {
  WorkerOptions o = DefaultWorkerOptions(role_);
  if (!config_path_.empty()) {
    KVTIER_ASSIGN_OR_RETURN(o, LoadWorkerOptions(config_path_, o));
  }
  auto given = [&](const char* flag) { return app_ != nullptr && app_->count(flag) > 0; };
  if (given("--model-dir")) o.model_dir = flags_.model_dir;
  if (given("--backend")) o.backend = flags_.backend;
  if (given("--listen")) o.listen = flags_.listen;
  if (given("--store")) o.stores = flags_.stores;
  if (given("--store-rpc-timeout-ms")) o.store_rpc_timeout_ms = flags_.store_rpc_timeout_ms;
  if (given("--store-retry-after-ms")) o.store_retry_after_ms = flags_.store_retry_after_ms;
  if (given("--kv-cache-bytes")) {
    absl::StatusOr<uint64_t> b = ParseBytes(kv_cache_bytes_);
    if (!b.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--kv-cache-bytes: ", b.status().message()));
    }
    o.kv_cache_bytes = static_cast<int64_t>(*b);
  }
  if (given("--block-tokens")) o.block_tokens = flags_.block_tokens;
  if (given("--max-batch-tokens")) o.max_batch_tokens = flags_.max_batch_tokens;
  if (given("--max-batch-seqs")) o.max_batch_seqs = flags_.max_batch_seqs;
  if (given("--threads")) o.threads = flags_.threads;
  if (given("--model-name")) o.model_name = flags_.model_name;
  if (given("--ready-file")) o.ready_file = flags_.ready_file;
  if (given("--log-level")) o.log_level = flags_.log_level;
  if (given("--max-queued-requests")) o.max_queued_requests = flags_.max_queued_requests;
  if (given("--default-max-tokens")) o.default_max_tokens = flags_.default_max_tokens;
  if (given("--keep-blocks")) o.keep_blocks = flags_.keep_blocks;
  if (given("--store-copy-threads")) o.store_copy_threads = flags_.store_copy_threads;
  KVTIER_RETURN_IF_ERROR(FinalizeWorkerOptions(&o));
  return o;
}

}  // namespace kvtier::worker
