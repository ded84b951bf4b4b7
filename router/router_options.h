// Options of kvtier-router: a YAML file (--config), overridden by command-line flags, both
// from one option table (common/options.h). docs/serving.md ("Router") lists every field.
//
// Plain value types; thread-compatible.
#ifndef KVTIER_ROUTER_ROUTER_OPTIONS_H_
#define KVTIER_ROUTER_ROUTER_OPTIONS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/options.h"
#include "membership/membership_options.h"

namespace kvtier::router {

struct RouterOptions {
  // HTTP host:port (port 0: any free port). Default: 127.0.0.1:8000.
  std::string listen = "127.0.0.1:8000";
  // The served model id ("model" of requests must equal it). Default: the model directory's
  // last component.
  std::string model_name;
  // Directory with tokenizer.json (and tokenizer_config.json). Required.
  std::string model_dir;
  // "auto" (from tokenizer_config.json's chat_template), "llama3" or "chatml". Default: auto.
  std::string chat_format = "auto";
  // Prefill workers (gRPC host:port). Default: none (decode computes whole prompts).
  std::vector<std::string> prefill_workers;
  // Decode workers (gRPC host:port). At least one is required unless membership names them.
  std::vector<std::string> decode_workers;
  // Prefill is skipped when fewer prompt tokens than this are uncached. Default: 64.
  int64_t skip_prefill_below = 64;
  // Cluster-wide switch of the cache tier (false: no prefill calls, use_cache=false).
  // Default: true.
  bool cache = true;
  // max_tokens of requests that leave it out (clipped to the context). Default: 256.
  int64_t default_max_tokens = 256;
  // Longest accepted prompt; 0: the decode workers' max_context. Default: 0.
  int64_t max_prompt_tokens = 0;
  // Deadline of one generation (gRPC Generate) and of a prefill call. Default: 600000 ms.
  int64_t request_timeout_ms = 600000;
  // Deadline of the GetWorkerInfo health calls. Default: 1000 ms.
  int64_t health_timeout_ms = 1000;
  // Decode placement: how many held prompt blocks one request in flight on a worker outweighs
  // (docs/serving.md, "Placement"); 0: the longest held prefix wins whatever the load.
  // Default: 2.
  double placement_load_weight = 2;
  // Block keys remembered per decode worker for prefix affinity. Default: 65536.
  int64_t affinity_keys_per_worker = 65536;
  // Longest text prompt (a completions prompt or a rendered conversation) in bytes, checked
  // before tokenizing; 0: the prompt token limit times the tokenizer's longest token. Default: 0.
  int64_t max_prompt_bytes = 0;
  // Most choices (prompts × n) of one request. Default: 64.
  int64_t max_choices = 64;
  // HTTP threads (each serves one request at a time, streaming included). Default: 64.
  int http_threads = 64;
  // Accepted connections waiting for an HTTP thread; past it requests get 429. Default: 256.
  int max_queued_requests = 256;
  // Largest request body, with or without Content-Length (chunked). Default: 16 MiB.
  int64_t max_body_bytes = int64_t{16} << 20;
  // Written (atomically) once serving: {"http_port":..,"grpc_port":..,"pid":..} (grpc_port
  // repeats the HTTP port for the generic test helpers). Default: none.
  std::string ready_file;
  // spdlog level. Default: info.
  std::string log_level = "info";
  // HTTPS of the API and TLS of the calls to the workers, and the service token, or plain text
  // (the tls.* keys and service_token_file, docs/security.md). Default: none (one of them must
  // be given).
  TlsOptions tls;
  // "KEY TENANT" lines (router/api_keys.h): the API keys callers must send ("Authorization:
  // Bearer KEY") and the tenant of each. Required with TLS; with plain text and none, any caller
  // is served as tenant "" (a WARNING at start-up). Default: none.
  std::string api_keys_file;
  // Cluster membership through etcd (membership.*, docs/membership.md): the decode and prefill
  // workers serving this model join and leave the pool as they register and go, beside the
  // static lists. Default: off.
  membership::MembershipOptions membership;
};

// Command-line flags over the YAML config: Register, parse, then Resolve (validated, with
// model_name filled from model_dir when empty).
class RouterFlags : public OptionFlags<RouterOptions> {
 public:
  RouterFlags();
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_ROUTER_OPTIONS_H_
