#include "cachestore/store_config.h"

#include "absl/strings/str_cat.h"

namespace kvtier::cachestore {
namespace {

// The one declaration of every field: YAML key, flag, help, checks.
void DeclareStoreConfig(StoreConfig* c, OptionTable* t) {
  StoreOptions* o = &c->store;
  t->Add("listen", &c->listen, "gRPC host:port (port 0: any free port)").HostPort();
  t->Add("metrics_listen", &c->metrics_listen, "Prometheus /metrics host:port; 'off' disables")
      .HostPort(/*off_allowed=*/true);
  t->AddBytes("pool_bytes", &c->pool_bytes, "host pool size, e.g. 8GiB").Positive();
  t->AddBytes("slot_bytes", &o->slot_bytes, "slot size (largest block), e.g. 2MiB").Min(4096);
  t->Add("lease_timeout_ms", &o->lease_timeout, "readers must Release within this time").Positive();
  t->Add("reservation_timeout_ms", &o->reservation_timeout, "writers must Commit within this time")
      .Positive();
  t->Add("max_batch_keys", &o->max_batch_keys, "most keys in one Lookup or Reserve").Positive();
  t->Add("spill_dir", &o->spill_dir, "RocksDB spill directory (empty: spill off)");
  t->AddBytes("spill_capacity_bytes", &o->spill_capacity_bytes,
              "bytes the whole spill directory may take, e.g. 100GiB (required with spill_dir)")
      .Flag("--spill-capacity");
  t->Add("spill_min_hits", &o->spill_min_hits, "hits a block needs to be spilled");
  t->Add("spill_required", &o->spill_required,
         "refuse to start when the spill tier cannot be opened (default: start memory-only)");
  t->Add("spill_queue_blocks", &o->spill_queue_blocks,
         "coldest blocks written to disk ahead of eviction")
      .Positive();
  t->Add("spill_wait_ms", &o->spill_wait,
         "longest an eviction waits for the spiller to write a block (0: drop it)");
  t->Add("spill_retry_ms", &o->spill_retry, "first wait before reopening a failed spill tier")
      .Positive();
  t->Add("spill_quarantine_max", &o->spill_quarantine_max,
         "damaged spill databases kept under spill_dir/quarantine (0: deleted)");
  // Data plane and limits (docs/store-protocol.md).
  t->Add("data_interface", &c->data_interface,
         "data-plane interface, address of one, or 'all' (empty: listen's interface)");
  t->Add("slot_quarantine_ms", &o->slot_quarantine,
         "slots freed by an abort or expired reservation stay unused this long "
         "(0: max(reservation_timeout, 12 s))");
  t->Add("max_namespaces", &o->max_namespaces, "namespaces the store holds at once").Positive();
  t->Add("max_open_per_client", &o->max_open_per_client,
         "leases and reservations one client (gRPC connection) may hold open")
      .Positive();
  t->Add("spill_on_shutdown", &c->spill_on_shutdown,
         "SIGTERM writes the in-memory blocks to the spill tier");
  t->Add("ready_file", &c->ready_file, "write {grpc_port, metrics_port, pid} here when serving");
  t->Add("log_level", &c->log_level, "log level").OneOf(LogLevelNames());
  DeclareTlsOptions(&c->tls, t, TlsRole::kServer);
  membership::DeclareMembershipOptions(&c->membership, t);
  t->Finalize([c, o]() -> absl::Status {
    o->slot_count = c->pool_bytes / o->slot_bytes;
    if (o->slot_count == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pool_bytes ", c->pool_bytes, " holds no slot of ", o->slot_bytes, " bytes"));
    }
    if (o->slot_quarantine > absl::ZeroDuration() && o->slot_quarantine < o->reservation_timeout) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot_quarantine_ms (", absl::ToInt64Milliseconds(o->slot_quarantine),
                       ") must be at least reservation_timeout_ms (",
                       absl::ToInt64Milliseconds(o->reservation_timeout),
                       "): a writer may write until its reservation expires"));
    }
    if (!o->spill_dir.empty() &&
        SpillStore::PayloadBytes(o->spill_capacity_bytes) < o->slot_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spill_dir is set but spill_capacity_bytes (", o->spill_capacity_bytes,
          ") holds no block beside RocksDB's own files; set a larger spill_capacity_bytes"));
    }
    return absl::OkStatus();
  });
}

}  // namespace

absl::StatusOr<StoreConfig> LoadStoreConfig(const std::string& path) {
  return LoadYamlOptions(path, StoreConfig(), DeclareStoreConfig);
}

absl::Status FinalizeStoreConfig(StoreConfig* config) {
  return ValidateOptions(config, DeclareStoreConfig);
}

StoreFlags::StoreFlags() : OptionFlags(StoreConfig(), DeclareStoreConfig) {}

}  // namespace kvtier::cachestore
