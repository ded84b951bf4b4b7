#include "worker/worker_options.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/host_port.h"

namespace kvtier::worker {
namespace {

// The host part of the address others reach this worker at (membership.advertise, else
// listen); "" when unparsable.
std::string MembershipHost(const WorkerOptions& o) {
  absl::StatusOr<HostPort> hp =
      ParseHostPort(o.membership.advertise.empty() ? o.listen : o.membership.advertise);
  return hp.ok() ? hp->host : "";
}

// The one declaration of every field: YAML key, flag, help, checks (docs/serving.md).
void DeclareWorkerOptions(WorkerOptions* o, OptionTable* t) {
  t->Add("model_dir", &o->model_dir, "model directory (config.json + safetensors)")
      .Required()
      .DirWith("config.json");
  t->Add("backend", &o->backend, "engine backend").OneOf({"cpu", "cuda"});
  t->Add("listen", &o->listen, "gRPC host:port (port 0: any free port)").HostPort();
  t->Add("metrics_listen", &o->metrics_listen,
         "Prometheus /metrics host:port (port 0: any free port); 'off' disables")
      .HostPort(/*off_allowed=*/true);
  t->Add("stores", &o->stores, "store node host:port (repeat for several)")
      .Flag("--store")
      .HostPort();
  t->Add("store_rpc_timeout_ms", &o->store_rpc_timeout_ms, "deadline of each store control call")
      .Positive();
  t->Add("store_transfer_timeout_ms", &o->store_transfer_timeout_ms,
         "deadline of each batch of store transfers (then the connection is closed)")
      .Positive();
  t->Add("store_retry_after_ms", &o->store_retry_after_ms,
         "how long a failed store node is skipped")
      .Positive();
  t->Add("data_interface", &o->data_interface,
         "store data-plane interface, address of one, or 'all' (empty: the stores' route)");
  t->AddBytes("kv_cache_bytes", &o->kv_cache_bytes, "KV cache memory, e.g. 256MiB").Positive();
  t->Add("block_tokens", &o->block_tokens, "tokens per block").Positive();
  t->Add("max_batch_tokens", &o->max_batch_tokens, "most tokens per forward call").Positive();
  t->Add("max_batch_seqs", &o->max_batch_seqs, "most sequences per forward call").Positive();
  t->Add("threads", &o->threads, "CPU backend threads (0: all cores)").Min(0);
  t->Add("model_name", &o->model_name,
         "name reported in WorkerInfo (empty: the model directory's name)");
  t->Add("ready_file", &o->ready_file, "write {grpc_port, metrics_port, pid} here when serving");
  t->Add("log_level", &o->log_level, "log level").OneOf(LogLevelNames());
  t->Add("max_queued_requests", &o->max_queued_requests,
         "decode: most requests waiting for admission")
      .Positive();
  t->Add("default_max_tokens", &o->default_max_tokens,
         "decode: max_tokens of requests that leave it 0")
      .Positive();
  t->Add("drain_timeout_ms", &o->drain_timeout_ms,
         "decode: on SIGTERM, how long requests may take to finish (0: cancel at once)")
      .Min(0);
  t->Add("keep_blocks", &o->keep_blocks, "decode: keep finished requests' blocks as a first tier");
  t->Add("store_copy_threads", &o->store_copy_threads,
         "threads copying blocks to and from a same-host store (0: auto)")
      .Range(0, 64);
  DeclareTlsOptions(&o->tls, t, TlsRole::kServerAndClient);
  membership::DeclareMembershipOptions(&o->membership, t);
  t->Finalize([o]() -> absl::Status {
    if (o->max_batch_seqs >= o->max_batch_tokens) {
      // Every running sequence's decode token goes into one Forward, and prefill chunks need
      // room next to them.
      return absl::InvalidArgumentError(absl::StrCat("max_batch_seqs (", o->max_batch_seqs,
                                                     ") must be < max_batch_tokens (",
                                                     o->max_batch_tokens, ")"));
    }
    if (o->membership.enabled() && o->stores.empty() && o->data_interface.empty()) {
      const std::string host = MembershipHost(*o);
      if (host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]") {
        return absl::InvalidArgumentError(
            "data_interface: with stores from membership and a wildcard listen address, name "
            "the store data plane's interface or address");
      }
    }
    if (o->model_name.empty()) {  // "dir/" names "dir" too
      o->model_name = (std::filesystem::path(o->model_dir) / "").parent_path().filename().string();
    }
    return absl::OkStatus();
  });
}

}  // namespace

WorkerOptions DefaultWorkerOptions(absl::string_view role) {
  WorkerOptions o;
  o.listen = role == "decode" ? "127.0.0.1:50062" : "127.0.0.1:50061";
  return o;
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
  s.transfer_timeout = absl::Milliseconds(o.store_transfer_timeout_ms);
  s.retry_after = absl::Milliseconds(o.store_retry_after_ms);
  s.copy_threads = o.store_copy_threads;
  s.data_interface = o.data_interface;
  if (s.stores.empty() && s.data_interface.empty() && o.membership.enabled()) {
    // Stores from membership: the data plane takes the interface of the address this worker
    // is reached at (Finalize checked it is not a wildcard).
    s.data_interface = MembershipHost(o);
  }
  s.tls = o.tls;
  return s;
}

WorkerFlags::WorkerFlags(absl::string_view role)
    : OptionFlags(DefaultWorkerOptions(role), DeclareWorkerOptions) {}

}  // namespace kvtier::worker
