#include "router/router_options.h"

#include <filesystem>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace kvtier::router {
namespace {

absl::Status CheckHostPort(const char* field, const std::string& v) {
  const size_t colon = v.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(v).substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be host:port, got '", v, "'"));
  }
  return absl::OkStatus();
}

absl::Status Positive(const char* field, int64_t v) {
  if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(field, " must be > 0, got ", v));
  return absl::OkStatus();
}

std::vector<std::string> StringList(const YAML::Node& v) {
  std::vector<std::string> out;
  if (v.IsSequence()) {
    for (const auto& s : v) out.push_back(s.as<std::string>());
  } else if (!v.IsNull()) {
    out.push_back(v.as<std::string>());
  }
  return out;
}

}  // namespace

absl::StatusOr<RouterOptions> LoadRouterOptions(const std::string& path, RouterOptions c) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  if (root.IsNull()) return c;
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": not a map"));
  }
  std::string key;
  try {
    for (const auto& kv : root) {
      key = kv.first.as<std::string>();
      const YAML::Node& v = kv.second;
      if (key == "listen") {
        c.listen = v.as<std::string>();
      } else if (key == "model_name") {
        c.model_name = v.as<std::string>();
      } else if (key == "model_dir") {
        c.model_dir = v.as<std::string>();
      } else if (key == "chat_format") {
        c.chat_format = v.as<std::string>();
      } else if (key == "prefill_workers") {
        c.prefill_workers = StringList(v);
      } else if (key == "decode_workers") {
        c.decode_workers = StringList(v);
      } else if (key == "skip_prefill_below") {
        c.skip_prefill_below = v.as<int64_t>();
      } else if (key == "cache") {
        c.cache = v.as<bool>();
      } else if (key == "default_max_tokens") {
        c.default_max_tokens = v.as<int64_t>();
      } else if (key == "max_prompt_tokens") {
        c.max_prompt_tokens = v.as<int64_t>();
      } else if (key == "request_timeout_ms") {
        c.request_timeout_ms = v.as<int64_t>();
      } else if (key == "health_timeout_ms") {
        c.health_timeout_ms = v.as<int64_t>();
      } else if (key == "affinity_keys_per_worker") {
        c.affinity_keys_per_worker = v.as<int64_t>();
      } else if (key == "http_threads") {
        c.http_threads = v.as<int>();
      } else if (key == "max_body_bytes") {
        c.max_body_bytes = v.as<int64_t>();
      } else if (key == "ready_file") {
        c.ready_file = v.as<std::string>();
      } else if (key == "log_level") {
        c.log_level = v.as<std::string>();
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("config ", path, ": unknown key '", key, "'"));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", key, ": ", e.what()));
  }
  return c;
}

absl::Status FinalizeRouterOptions(RouterOptions* o) {
  if (o->model_dir.empty()) return absl::InvalidArgumentError("model_dir is required");
  std::error_code ec;
  if (!std::filesystem::is_regular_file(std::filesystem::path(o->model_dir) / "tokenizer.json",
                                        ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model_dir: '", o->model_dir, "' has no tokenizer.json"));
  }
  if (o->chat_format != "auto" && o->chat_format != "llama3" && o->chat_format != "chatml") {
    return absl::InvalidArgumentError(
        absl::StrCat("chat_format must be auto, llama3 or chatml, got '", o->chat_format, "'"));
  }
  KVTIER_RETURN_IF_ERROR(CheckHostPort("listen", o->listen));
  if (o->decode_workers.empty()) {
    return absl::InvalidArgumentError("at least one decode worker is required");
  }
  for (const std::string& w : o->decode_workers) {
    KVTIER_RETURN_IF_ERROR(CheckHostPort("decode_workers", w));
  }
  for (const std::string& w : o->prefill_workers) {
    KVTIER_RETURN_IF_ERROR(CheckHostPort("prefill_workers", w));
  }
  if (o->skip_prefill_below < 0) {
    return absl::InvalidArgumentError("skip_prefill_below must be >= 0");
  }
  if (o->max_prompt_tokens < 0) {
    return absl::InvalidArgumentError("max_prompt_tokens must be >= 0");
  }
  KVTIER_RETURN_IF_ERROR(Positive("default_max_tokens", o->default_max_tokens));
  KVTIER_RETURN_IF_ERROR(Positive("request_timeout_ms", o->request_timeout_ms));
  KVTIER_RETURN_IF_ERROR(Positive("health_timeout_ms", o->health_timeout_ms));
  KVTIER_RETURN_IF_ERROR(Positive("affinity_keys_per_worker", o->affinity_keys_per_worker));
  KVTIER_RETURN_IF_ERROR(Positive("http_threads", o->http_threads));
  KVTIER_RETURN_IF_ERROR(Positive("max_body_bytes", o->max_body_bytes));
  static const char* const kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  bool level_ok = false;
  for (const char* l : kLevels) level_ok |= o->log_level == l;
  if (!level_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "log_level must be one of ", absl::StrJoin(kLevels, "|"), ", got '", o->log_level, "'"));
  }
  if (o->model_name.empty()) {
    std::filesystem::path p(o->model_dir);
    if (!p.has_filename()) p = p.parent_path();
    o->model_name = p.filename().string();
  }
  return absl::OkStatus();
}

void RouterFlags::Register(CLI::App& app) {
  app_ = &app;
  app.add_option("--config", config_path_, "YAML config file (flags override it)");
  app.add_option("--listen", flags_.listen, "HTTP host:port (port 0: any free port)");
  app.add_option("--model-name", flags_.model_name, "served model id");
  app.add_option("--model-dir", flags_.model_dir, "directory with tokenizer.json");
  app.add_option("--chat-format", flags_.chat_format, "auto | llama3 | chatml");
  app.add_option("--prefill", flags_.prefill_workers, "prefill worker host:port (repeat)");
  app.add_option("--decode", flags_.decode_workers, "decode worker host:port (repeat)");
  app.add_option("--skip-prefill-below", flags_.skip_prefill_below,
                 "skip prefill when fewer prompt tokens are uncached");
  app.add_option("--cache", flags_.cache, "use the KV-cache tier (true|false)");
  app.add_option("--default-max-tokens", flags_.default_max_tokens,
                 "max_tokens of requests that leave it out");
  app.add_option("--max-prompt-tokens", flags_.max_prompt_tokens,
                 "longest prompt (0: the decode workers' max_context)");
  app.add_option("--request-timeout-ms", flags_.request_timeout_ms, "deadline of one generation");
  app.add_option("--health-timeout-ms", flags_.health_timeout_ms, "deadline of health calls");
  app.add_option("--affinity-keys-per-worker", flags_.affinity_keys_per_worker,
                 "block keys remembered per decode worker");
  app.add_option("--http-threads", flags_.http_threads, "HTTP worker threads");
  app.add_option("--max-body-bytes", flags_.max_body_bytes, "largest request body");
  app.add_option("--ready-file", flags_.ready_file, "write {http_port, pid} when serving");
  app.add_option("--log-level", flags_.log_level, "trace|debug|info|warn|error");
}

absl::StatusOr<RouterOptions> RouterFlags::Resolve() const {
  RouterOptions o;
  if (!config_path_.empty()) {
    KVTIER_ASSIGN_OR_RETURN(o, LoadRouterOptions(config_path_, o));
  }
  auto given = [&](const char* flag) { return app_ != nullptr && app_->count(flag) > 0; };
  if (given("--listen")) o.listen = flags_.listen;
  if (given("--model-name")) o.model_name = flags_.model_name;
  if (given("--model-dir")) o.model_dir = flags_.model_dir;
  if (given("--chat-format")) o.chat_format = flags_.chat_format;
  if (given("--prefill")) o.prefill_workers = flags_.prefill_workers;
  if (given("--decode")) o.decode_workers = flags_.decode_workers;
  if (given("--skip-prefill-below")) o.skip_prefill_below = flags_.skip_prefill_below;
  if (given("--cache")) o.cache = flags_.cache;
  if (given("--default-max-tokens")) o.default_max_tokens = flags_.default_max_tokens;
  if (given("--max-prompt-tokens")) o.max_prompt_tokens = flags_.max_prompt_tokens;
  if (given("--request-timeout-ms")) o.request_timeout_ms = flags_.request_timeout_ms;
  if (given("--health-timeout-ms")) o.health_timeout_ms = flags_.health_timeout_ms;
  if (given("--affinity-keys-per-worker")) {
    o.affinity_keys_per_worker = flags_.affinity_keys_per_worker;
  }
  if (given("--http-threads")) o.http_threads = flags_.http_threads;
  if (given("--max-body-bytes")) o.max_body_bytes = flags_.max_body_bytes;
  if (given("--ready-file")) o.ready_file = flags_.ready_file;
  if (given("--log-level")) o.log_level = flags_.log_level;
  KVTIER_RETURN_IF_ERROR(FinalizeRouterOptions(&o));
  return o;
}

}  // namespace kvtier::router
