#include "router/router_options.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace kvtier::router {
namespace {

// The one declaration of every field: YAML key, flag, help, checks (docs/serving.md, "Router").
void DeclareRouterOptions(RouterOptions* o, OptionTable* t) {
  t->Add("listen", &o->listen, "HTTP host:port (port 0: any free port)").HostPort();
  t->Add("model_name", &o->model_name, "served model id (empty: the model directory's name)");
  t->Add("model_dir", &o->model_dir, "directory with tokenizer.json")
      .Required()
      .DirWith("tokenizer.json");
  t->Add("chat_format", &o->chat_format, "chat template").OneOf({"auto", "llama3", "chatml"});
  t->Add("prefill_workers", &o->prefill_workers, "prefill worker host:port (repeat)")
      .Flag("--prefill")
      .HostPort();
  t->Add("decode_workers", &o->decode_workers, "decode worker host:port (repeat)")
      .Flag("--decode")
      .HostPort();
  t->Add("skip_prefill_below", &o->skip_prefill_below,
         "skip prefill when fewer prompt tokens are uncached")
      .Min(0);
  t->Add("cache", &o->cache, "use the KV-cache tier");
  t->Add("default_max_tokens", &o->default_max_tokens, "max_tokens of requests that leave it out")
      .Positive();
  t->Add("max_prompt_tokens", &o->max_prompt_tokens,
         "longest prompt (0: the decode workers' max_context)")
      .Min(0);
  t->Add("request_timeout_ms", &o->request_timeout_ms, "deadline of one generation").Positive();
  t->Add("health_timeout_ms", &o->health_timeout_ms, "deadline of health calls").Positive();
  t->Add("placement_load_weight", &o->placement_load_weight,
         "decode placement: held blocks one request in flight outweighs (0: prefix only)")
      .Min(0);
  t->Add("affinity_keys_per_worker", &o->affinity_keys_per_worker,
         "block keys remembered per decode worker")
      .Positive();
  t->AddBytes("max_prompt_bytes", &o->max_prompt_bytes,
              "longest text prompt (0: prompt token limit x longest token)")
      .Min(0);
  t->Add("max_choices", &o->max_choices, "most choices (prompts x n) per request").Positive();
  t->Add("http_threads", &o->http_threads, "HTTP worker threads").Positive();
  t->Add("max_queued_requests", &o->max_queued_requests,
         "connections waiting for an HTTP thread (more: 429)")
      .Positive();
  t->AddBytes("max_body_bytes", &o->max_body_bytes, "largest request body").Positive();
  t->Add("ready_file", &o->ready_file, "write {http_port, grpc_port, pid} here when serving");
  t->Add("log_level", &o->log_level, "log level").OneOf(LogLevelNames());
  DeclareTlsOptions(&o->tls, t, TlsRole::kHttpServerAndClient);
  membership::DeclareMembershipOptions(&o->membership, t);
  t->Add("api_keys_file", &o->api_keys_file,
         "file of 'KEY TENANT' lines: the API keys callers must send");
  t->Finalize([o]() -> absl::Status {
    if (o->decode_workers.empty() && !o->membership.enabled()) {
      return absl::InvalidArgumentError(
          "decode_workers (--decode): required unless workers come from membership "
          "(membership.etcd)");
    }
    if (!o->tls.plaintext && o->api_keys_file.empty()) {
      return absl::InvalidArgumentError(
          "TLS needs api_keys_file (--api-keys-file): the API keys callers must send "
          "(docs/security.md)");
    }
    if (o->model_name.empty()) {  // "dir/" names "dir" too
      o->model_name = (std::filesystem::path(o->model_dir) / "").parent_path().filename().string();
    }
    return absl::OkStatus();
  });
}

}  // namespace

RouterFlags::RouterFlags() : OptionFlags(RouterOptions(), DeclareRouterOptions) {}

}  // namespace kvtier::router
