// Options of the store's state machine (Store) and of its spill tier (Spiller): one plain
// struct, filled from kvtier-store's option table (cachestore/store_config.cc).
//
// Plain value type; thread-compatible.
#ifndef KVTIER_CACHESTORE_STORE_OPTIONS_H_
#define KVTIER_CACHESTORE_STORE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace kvtier::cachestore {

struct StoreOptions {
  // Bytes per slot: the largest block the store accepts. Default: 2 MiB.
  uint64_t slot_bytes = 2ull << 20;
  // Slots in the pool. Default: 512 (1 GiB at 2 MiB slots).
  uint64_t slot_count = 512;
  // A lease not released within this time is dropped. Default: 30 s.
  absl::Duration lease_timeout = absl::Seconds(30);
  // A reservation not committed within this time is aborted. Default: 30 s.
  absl::Duration reservation_timeout = absl::Seconds(30);
  // Most keys one Lookup or Reserve may name. Default: 4096.
  uint32_t max_batch_keys = 4096;
  // Spill directory (RocksDB in spill_dir/db); empty turns spill off. Default: empty.
  std::string spill_dir;
  // Bytes the whole spill directory may take (payloads and RocksDB's WAL, memtable flushes,
  // blob files; quarantined databases aside). Default: 0.
  uint64_t spill_capacity_bytes = 0;
  // Hits a block needs before eviction writes it to the spill tier (0: every block; a block
  // whose descendants are spilled is always spilled, so chains stay whole). Default: 0.
  uint32_t spill_min_hits = 0;
  // Recover fails when the spill tier cannot be opened; otherwise the store starts from memory
  // only and keeps retrying. Default: false.
  bool spill_required = false;
  // Least recently used evictable blocks the spiller keeps written to disk ahead of eviction
  // (the spill queue), so that eviction moves a block to disk without I/O. Default: 64.
  uint32_t spill_queue_blocks = 64;
  // Longest an eviction waits (without the lock) for the spiller to write a block it would
  // otherwise drop; 0: drop it, control calls never wait for the disk. Default: 0.
  absl::Duration spill_wait = absl::ZeroDuration();
  // Wait before reopening an offline spill tier; doubles after each failed try, up to 64x.
  // Default: 1 s.
  absl::Duration spill_retry = absl::Seconds(1);
  // Damaged databases kept under spill_dir/quarantine (0: deleted instead). Default: 2.
  uint32_t spill_quarantine_max = 2;
  // Limits and late writes (docs/store-protocol.md, "Limits" and "Late writes").
  // A slot freed by Abort or by an expired reservation is quarantined this long (and until
  // the UCX progress thread has run since) before it is reused: a put of the old writer may
  // still land in it. 0: the larger of reservation_timeout and 12 s (a client's default
  // transfer_timeout of 10 s, plus 2 s); set, it must be at least reservation_timeout.
  // Default: 0.
  absl::Duration slot_quarantine = absl::ZeroDuration();
  // Namespaces held at once (each with a block, reservation or lease); a Reserve that would
  // add one more gets RESOURCE_EXHAUSTED. Default: 4096.
  uint32_t max_namespaces = 4096;
  // Leases and reservations one client (one gRPC connection) may hold open at once; a Lookup
  // with a lease or a Reserve beyond it gets RESOURCE_EXHAUSTED. Default: 1024.
  uint32_t max_open_per_client = 1024;
  // Threads that verify a large commit's checksums (the committing writer waits on them);
  // 0: half the cores, at least 2 and at most 8. Default: 0.
  int verify_threads = 0;
};

}  // namespace kvtier::cachestore

#endif  // KVTIER_CACHESTORE_STORE_OPTIONS_H_
