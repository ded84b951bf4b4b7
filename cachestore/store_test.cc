#include "cachestore/store.h"

#include <filesystem>
#include <random>
#include <thread>

#include "common/checksum.h"
#include "gtest/gtest.h"

namespace kvtier::cachestore {
namespace {

constexpr uint64_t kSlot = 4096;

BlockKey Key(uint8_t a, uint8_t b = 0) {
  BlockKey k{};
  k[0] = a;
  k[1] = b;
  k[31] = 0x5a;
  return k;
}

NamespaceId Ns(uint8_t n) {
  NamespaceId id{};
  id[0] = n;
  id[31] = 0xee;
  return id;
}

// The smallest spill capacity whose payload share holds `payload` bytes.
uint64_t CapacityFor(uint64_t payload) {
  uint64_t lo = payload, hi = 4 * payload + (64ull << 20);
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (SpillStore::PayloadBytes(mid) >= payload) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

class StoreTest : public ::testing::Test {
 protected:
  // A store of `slots` slots; with `spill`, a spill tier whose payload share is `spill_payload`
  // bytes, in a directory that stays the same for the whole test (a "restart" recovers it).
  void Make(uint64_t slots, bool spill = false, uint64_t spill_payload = 0,
            uint64_t slot_bytes = kSlot) {
    store_.reset();
    options_.slot_bytes = slot_bytes;
    options_.slot_count = slots;
    options_.spill_capacity_bytes = spill ? CapacityFor(spill_payload) : 0;
    options_.spill_retry = absl::Milliseconds(20);
    pool_.assign(slots * slot_bytes, 0);
    if (spill && dir_.empty()) {
      dir_ = std::filesystem::path(::testing::TempDir()) /
             ("store_test_" + std::to_string(getpid()) + "_" +
              ::testing::UnitTest::GetInstance()->current_test_info()->name());
      std::filesystem::remove_all(dir_);
    }
    options_.spill_dir = spill ? dir_.string() : "";
    Store::ProgressCount progress = nullptr;
    if (count_progress_) progress = [this] { return progress_; };
    store_ = std::make_unique<Store>(
        options_, pool_.data(), nullptr, [this] { return now_; }, progress);
    ASSERT_TRUE(store_->Recover().ok());
  }
  void TearDown() override {
    store_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Payload of block `key`: deterministic bytes.
  static std::vector<uint8_t> Payload(const BlockKey& key, uint64_t size = kSlot) {
    std::vector<uint8_t> p(size);
    std::mt19937 rng(key[0] * 256 + key[1]);
    for (auto& b : p) b = static_cast<uint8_t>(rng());
    return p;
  }

  // Reserves, writes and commits `keys` as one chain; returns outcomes.
  std::vector<ReserveOutcome> Put(const NamespaceId& ns, std::vector<BlockKey> keys,
                                  std::optional<BlockKey> parent = std::nullopt) {
    store_->WaitForSpiller();
    auto r = store_->Reserve(ns, keys, parent, kSlot);
    EXPECT_TRUE(r.ok()) << r.status();
    std::vector<uint64_t> sums;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (r->outcomes[i] != ReserveOutcome::kReserved) continue;
      auto p = Payload(keys[i]);
      std::memcpy(pool_.data() + r->offsets[i], p.data(), p.size());
      sums.push_back(BlockChecksum(p.data(), p.size()));
    }
    if (r->reservation_id != 0) {
      auto c = store_->Commit(r->reservation_id, sums);
      EXPECT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(c->committed, sums.size());
    }
    store_->WaitForSpiller();  // deterministic tests: the spill queue is written
    return r->outcomes;
  }

  // Leases the prefix, checks each block's bytes, releases. Returns the hit count.
  uint32_t GetAndCheck(const NamespaceId& ns, std::vector<BlockKey> keys) {
    auto r = store_->Lookup(ns, keys, /*lease=*/true);
    EXPECT_TRUE(r.ok()) << r.status();
    for (uint32_t i = 0; i < r->hit_count; ++i) {
      auto p = Payload(keys[i]);
      EXPECT_EQ(0, std::memcmp(pool_.data() + r->blocks[i].offset, p.data(), p.size()))
          << "block " << i;
      EXPECT_EQ(r->blocks[i].checksum, BlockChecksum(p.data(), p.size()));
    }
    if (r->lease_id != 0) {
      EXPECT_TRUE(store_->Release(r->lease_id).ok());
    }
    return r->hit_count;
  }

  StoreOptions options_;
  std::vector<uint8_t> pool_;
  std::unique_ptr<Store> store_;
  std::filesystem::path dir_;
  absl::Time now_ = absl::FromUnixSeconds(1000);
  bool count_progress_ = false;  // Make gives the store progress_ as its data plane's count
  uint64_t progress_ = 0;
};

TEST_F(StoreTest, PutThenLookupReturnsLongestPrefix) {
  Make(8);
  auto out = Put(Ns(1), {Key(1), Key(2), Key(3)});
  EXPECT_EQ(out, std::vector<ReserveOutcome>(3, ReserveOutcome::kReserved));
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2), Key(3), Key(4)}), 3u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(9), Key(3)}), 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(9)}), 0u);
  auto probe = store_->Lookup(Ns(1), {Key(1), Key(2)}, /*lease=*/false);
  ASSERT_TRUE(probe.ok());
  EXPECT_EQ(probe->hit_count, 2u);
  EXPECT_EQ(probe->lease_id, 0u);
  EXPECT_TRUE(probe->blocks.empty());
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.blocks_in_memory, 3u);
  EXPECT_EQ(s.bytes_in, 3 * kSlot);
  EXPECT_EQ(s.active_leases, 0u);
}

TEST_F(StoreTest, SecondWriterIsToldPresent) {
  Make(8);
  Put(Ns(1), {Key(1), Key(2)});
  auto r = store_->Reserve(Ns(1), {Key(1), Key(2), Key(3)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcomes[0], ReserveOutcome::kPresent);
  EXPECT_EQ(r->outcomes[1], ReserveOutcome::kPresent);
  EXPECT_EQ(r->outcomes[2], ReserveOutcome::kReserved);
  // A concurrent writer of a key still being written is told it is in progress.
  auto r2 = store_->Reserve(Ns(1), {Key(3)}, Key(2), kSlot);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->outcomes[0], ReserveOutcome::kInProgress);
  EXPECT_EQ(r2->reservation_id, 0u);
  // Reserved but uncommitted blocks are invisible.
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2), Key(3)}), 2u);
}

TEST_F(StoreTest, ChecksumMismatchIsRejected) {
  Make(4);
  auto r = store_->Reserve(Ns(1), {Key(1), Key(2)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  auto p1 = Payload(Key(1)), p2 = Payload(Key(2));
  std::memcpy(pool_.data() + r->offsets[0], p1.data(), kSlot);
  std::memcpy(pool_.data() + r->offsets[1], p2.data(), kSlot / 2);  // torn write
  auto c = store_->Commit(r->reservation_id,
                          {BlockChecksum(p1.data(), kSlot), BlockChecksum(p2.data(), kSlot)});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->committed, 1u);
  ASSERT_EQ(c->rejected.size(), 1u);
  EXPECT_EQ(c->rejected[0], Key(2));
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2)}), 1u);
  EXPECT_EQ(store_->Stats().checksum_failures, 1u);
  EXPECT_EQ(store_->Stats().slots_used, 1u);
}

TEST_F(StoreTest, BadInputIsRejectedAndLosesNothing) {
  Make(4);
  EXPECT_EQ(store_->Lookup(Ns(1), {}, true).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<BlockKey> many(options_.max_batch_keys + 1, Key(1));
  EXPECT_EQ(store_->Lookup(Ns(1), many, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Reserve(Ns(1), many, std::nullopt, kSlot).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Reserve(Ns(1), {Key(1)}, std::nullopt, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Release(12345).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Abort(12345).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Commit(12345, {}).status().code(), absl::StatusCode::kNotFound);

  // A commit with the wrong number of checksums keeps the reservation intact.
  auto r = store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  auto p = Payload(Key(1));
  std::memcpy(pool_.data() + r->offsets[0], p.data(), kSlot);
  EXPECT_EQ(store_->Commit(r->reservation_id, {1, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto c = store_->Commit(r->reservation_id, {BlockChecksum(p.data(), kSlot)});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->committed, 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 1u);
}

TEST_F(StoreTest, UnknownNamespaceIsAMiss) {
  Make(4);
  Put(Ns(1), {Key(1)});
  EXPECT_EQ(GetAndCheck(Ns(2), {Key(1)}), 0u);  // same key, other namespace: never confused
  EXPECT_EQ(GetAndCheck(Ns(3), {Key(1)}), 0u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 1u);
}

TEST_F(StoreTest, ReservationTimeoutFreesSlots) {
  Make(2);
  auto r = store_->Reserve(Ns(1), {Key(1), Key(2)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  // Every slot is reserved: a third block gets no space.
  auto full = store_->Reserve(Ns(1), {Key(3)}, std::nullopt, kSlot);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->outcomes[0], ReserveOutcome::kNoSpace);
  store_->ReapExpired();
  EXPECT_EQ(store_->Stats().active_reservations, 1u);  // not yet expired
  now_ += options_.reservation_timeout + absl::Seconds(1);
  store_->ReapExpired();
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.expired_reservations, 1u);
  // Its slots are quarantined (a late put may still land), then free.
  EXPECT_EQ(s.slots_used, 2u);
  EXPECT_EQ(s.slots_quarantined, 2u);
  now_ += options_.reservation_timeout;
  store_->ReapExpired();
  s = store_->Stats();
  EXPECT_EQ(s.slots_used, 0u);
  EXPECT_EQ(s.slots_quarantined, 0u);
  EXPECT_EQ(store_->Commit(r->reservation_id, {0, 0}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
  EXPECT_EQ(Put(Ns(1), {Key(3)})[0], ReserveOutcome::kReserved);
}

// Issue 10, defect 6: a put of a writer that timed out may land after its Abort (or after the
// reaper freed its reservation); the slot must not hold another block by then.
TEST_F(StoreTest, AbortedSlotsAreQuarantinedBeforeReuse) {
  options_.reservation_timeout = absl::Seconds(5);
  options_.slot_quarantine = absl::Seconds(20);
  Make(2);
  auto r = store_->Reserve(Ns(1), {Key(1), Key(2)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store_->Abort(r->reservation_id).ok());
  // Before the fix the next Reserve got the aborted slots at once.
  auto next = store_->Reserve(Ns(1), {Key(3)}, std::nullopt, kSlot);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->outcomes[0], ReserveOutcome::kNoSpace);
  EXPECT_EQ(store_->Stats().slots_quarantined, 2u);
  EXPECT_EQ(store_->Stats().slots_used, 2u);
  now_ += absl::Seconds(19);
  store_->ReapExpired();
  EXPECT_EQ(Put(Ns(1), {Key(3)})[0], ReserveOutcome::kNoSpace);
  now_ += absl::Seconds(1);
  EXPECT_EQ(Put(Ns(1), {Key(3)})[0], ReserveOutcome::kReserved);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(3)}), 1u);
}

TEST_F(StoreTest, QuarantineIsAtLeastTheReservationTimeout) {
  options_.reservation_timeout = absl::Seconds(40);
  options_.slot_quarantine = absl::Seconds(1);  // the config refuses it; the store raises it
  Make(1);
  auto r = store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store_->Abort(r->reservation_id).ok());
  now_ += absl::Seconds(39);
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kNoSpace);
  now_ += absl::Seconds(1);
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kReserved);
}

// A put stuck in the store's socket buffers (the store was stopped) is applied by the progress
// thread when it runs again: a slot leaves quarantine only after a progress pass that began
// after it was freed, however much time went by.
TEST_F(StoreTest, QuarantineWaitsForTheDataPlanesProgress) {
  count_progress_ = true;
  Make(1);
  progress_ = 7;
  auto r = store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store_->Abort(r->reservation_id).ok());
  now_ += absl::Hours(1);
  store_->ReapExpired();
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kNoSpace);
  ++progress_;  // this pass may have begun before the abort
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kNoSpace);
  ++progress_;
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kReserved);
}

// Quarantined slots count as used: eviction makes room beside them, and churn of aborted
// reservations never keeps honest writers out for longer than the grace period.
TEST_F(StoreTest, ChurnOfAbortedReservationsDoesNotStarveHonestWriters) {
  options_.reservation_timeout = absl::Seconds(5);
  options_.slot_quarantine = absl::Seconds(10);
  Make(4);
  Put(Ns(1), {Key(1), Key(2)});  // two committed, evictable blocks
  for (int round = 0; round < 5; ++round) {
    // A client reserves whatever it can and aborts, again and again.
    for (int i = 0; i < 8; ++i) {
      auto r = store_->Reserve(Ns(2), {Key(100 + i, round)}, std::nullopt, kSlot);
      ASSERT_TRUE(r.ok());
      if (r->reservation_id != 0) ASSERT_TRUE(store_->Abort(r->reservation_id).ok());
    }
    const StoreStats s = store_->Stats();
    EXPECT_EQ(s.slots_used, 4u);
    EXPECT_EQ(s.slots_quarantined, 4u) << "round " << round;  // the blocks were evicted for it
    EXPECT_EQ(Put(Ns(1), {Key(10, round)})[0], ReserveOutcome::kNoSpace);
    now_ += absl::Seconds(10);
    EXPECT_EQ(Put(Ns(1), {Key(10, round)})[0], ReserveOutcome::kReserved) << "round " << round;
    EXPECT_EQ(GetAndCheck(Ns(1), {Key(10, round)}), 1u);
  }
}

// Issue 10, 9: PRESENT for a key another writer has only reserved made a caller count a block
// as stored that may never be.
TEST_F(StoreTest, AKeyReservedByAnotherWriterIsInProgressNotPresent) {
  Make(4);
  auto a = store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot);
  ASSERT_TRUE(a.ok());
  auto b = store_->Reserve(Ns(1), {Key(1), Key(2)}, std::nullopt, kSlot);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(b->outcomes[0], ReserveOutcome::kPresent);
  EXPECT_EQ(b->outcomes[0], ReserveOutcome::kInProgress);
  EXPECT_EQ(b->outcomes[1], ReserveOutcome::kReserved);
  ASSERT_TRUE(store_->Abort(a->reservation_id).ok());  // the first writer fails
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
  EXPECT_EQ(Put(Ns(1), {Key(1)})[0], ReserveOutcome::kReserved);  // so the key can be written
  EXPECT_EQ(Put(Ns(1), {Key(1)})[0], ReserveOutcome::kPresent);
}

// Issue 10, 9: a namespace id was interned on every Reserve and never freed.
TEST_F(StoreTest, NamespaceIdsAreFreedWhenNothingUsesThem) {
  Make(4);
  for (uint8_t n = 1; n <= 20; ++n) {
    auto r = store_->Reserve(Ns(n), {Key(n)}, std::nullopt, kSlot);
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(store_->Abort(r->reservation_id).ok());
    now_ += absl::Hours(1);  // past the slot's quarantine
  }
  EXPECT_EQ(store_->Stats().namespaces, 0u);
  Put(Ns(1), {Key(1)});
  Put(Ns(2), {Key(2)});
  EXPECT_EQ(store_->Stats().namespaces, 2u);
  EXPECT_EQ(store_->DropNamespace(Ns(1)).dropped, 1u);
  EXPECT_EQ(store_->Stats().namespaces, 1u);
  auto lease = store_->Lookup(Ns(2), {Key(2)}, true);  // a lease keeps its namespace
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(store_->DropNamespace(Ns(2)).pinned_kept, 1u);
  EXPECT_EQ(store_->Stats().namespaces, 1u);
  ASSERT_TRUE(store_->Release(lease->lease_id).ok());
  EXPECT_EQ(store_->DropNamespace(Ns(2)).dropped, 1u);
  EXPECT_EQ(store_->Stats().namespaces, 0u);
  // Eviction of a namespace's last block frees it too; a freed id serves a new namespace.
  for (uint8_t n = 1; n <= 8; ++n) Put(Ns(n), {Key(n, 1)});
  EXPECT_EQ(store_->Stats().namespaces, 4u);
  EXPECT_EQ(GetAndCheck(Ns(8), {Key(8, 1)}), 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(8, 1)}), 0u);
  EXPECT_EQ(GetAndCheck(Ns(8), {Key(1, 1)}), 0u);
}

TEST_F(StoreTest, NamespacesAreBounded) {
  options_.max_namespaces = 2;
  Make(8);
  Put(Ns(1), {Key(1)});
  Put(Ns(2), {Key(2)});
  auto r = store_->Reserve(Ns(3), {Key(3)}, std::nullopt, kSlot);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("max_namespaces"), std::string::npos) << r.status();
  EXPECT_EQ(Put(Ns(1), {Key(4)})[0], ReserveOutcome::kReserved);  // a known one still works
  store_->DropNamespace(Ns(1));
  EXPECT_EQ(Put(Ns(3), {Key(3)})[0], ReserveOutcome::kReserved);
}

// Issue 10, 9: leases per client were unbounded.
TEST_F(StoreTest, OpenLeasesAndReservationsPerClientAreBounded) {
  options_.max_open_per_client = 2;
  Make(8);
  Put(Ns(1), {Key(1)});
  auto l1 = store_->Lookup(Ns(1), {Key(1)}, true, "a");
  auto l2 = store_->Lookup(Ns(1), {Key(1)}, true, "a");
  ASSERT_TRUE(l1.ok() && l2.ok());
  auto l3 = store_->Lookup(Ns(1), {Key(1)}, true, "a");
  EXPECT_EQ(l3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(l3.status().message().find("max_open_per_client"), std::string::npos) << l3.status();
  EXPECT_EQ(store_->Reserve(Ns(1), {Key(2)}, std::nullopt, kSlot, "a").status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store_->Lookup(Ns(1), {Key(1)}, false, "a").ok());            // counting pins nothing
  auto other = store_->Reserve(Ns(1), {Key(2)}, std::nullopt, kSlot, "b");  // other clients
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->outcomes[0], ReserveOutcome::kReserved);
  // Calls that open nothing (a miss, a present key) count nothing.
  EXPECT_TRUE(store_->Lookup(Ns(1), {Key(9)}, true, "b").ok());
  EXPECT_TRUE(store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kSlot, "b").ok());
  EXPECT_TRUE(store_->Lookup(Ns(1), {Key(1)}, true, "b").ok());  // b's second
  ASSERT_TRUE(store_->Release(l1->lease_id).ok());
  auto again = store_->Reserve(Ns(1), {Key(3)}, std::nullopt, kSlot, "a");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->outcomes[0], ReserveOutcome::kReserved);
  // Expiry gives them back too.
  now_ += absl::Hours(1);
  store_->ReapExpired();
  EXPECT_EQ(store_->Stats().active_leases, 0u);
  EXPECT_EQ(store_->Stats().active_reservations, 0u);
  EXPECT_TRUE(store_->Lookup(Ns(1), {Key(1)}, true, "a").ok());
  EXPECT_TRUE(store_->Lookup(Ns(1), {Key(1)}, true, "a").ok());
}

TEST_F(StoreTest, LeaseExpiryUnpins) {
  Make(1);
  Put(Ns(1), {Key(1)});
  auto l = store_->Lookup(Ns(1), {Key(1)}, true);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kNoSpace);  // the only slot is pinned
  now_ += options_.lease_timeout + absl::Seconds(1);
  store_->ReapExpired();
  EXPECT_EQ(store_->Stats().expired_leases, 1u);
  EXPECT_EQ(store_->Release(l->lease_id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Put(Ns(1), {Key(2)})[0], ReserveOutcome::kReserved);  // now evictable
}

TEST_F(StoreTest, LeasedBlocksAreNeverEvicted) {
  Make(3);
  Put(Ns(1), {Key(1)});
  Put(Ns(1), {Key(2)});
  auto l = store_->Lookup(Ns(1), {Key(1)}, true);  // pin the older block
  ASSERT_TRUE(l.ok());
  auto before = Payload(Key(1));
  for (uint8_t i = 10; i < 30; ++i) Put(Ns(1), {Key(i)});  // churn through the other slots
  EXPECT_EQ(0, std::memcmp(pool_.data() + l->blocks[0].offset, before.data(), kSlot));
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 1u);
  EXPECT_TRUE(store_->Release(l->lease_id).ok());
  EXPECT_GT(store_->Stats().evictions, 0u);
}

TEST_F(StoreTest, EvictionIsLeafFirstLru) {
  Make(4);
  Put(Ns(1), {Key(1), Key(2), Key(3)});         // chain 1 -> 2 -> 3
  Put(Ns(1), {Key(9)});                         // an unrelated block, newer than the chain
  ASSERT_EQ(GetAndCheck(Ns(1), {Key(1)}), 1u);  // the chain's root is now the newest
  // Pure LRU would evict 2 (oldest); leaf-first evicts the chain's leaf 3, then 2, then 9.
  Put(Ns(1), {Key(20)});
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2), Key(3)}), 2u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(9)}), 1u);
  // Now 20 is the least recently used leaf (1, 2 and 9 were read after it was written).
  Put(Ns(1), {Key(21)});
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(20)}), 0u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(9)}), 1u);
  // Touch 9, 21 and the root: 2 is the oldest leaf and goes before its (older) parent 1.
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(21)}), 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 1u);
  Put(Ns(1), {Key(22)});
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2)}), 1u);
  EXPECT_EQ(store_->Stats().evictions, 3u);
}

TEST_F(StoreTest, ABlockCannotBeItsOwnParent) {
  // Issue 10, defect 4: committed as its own parent, a block counted as its own child and was
  // never evictable; a few such blocks filled the pool for good.
  Make(2);
  auto r = store_->Reserve(Ns(1), {Key(1), Key(1), Key(1)}, Key(1), kSlot);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  if (r.ok() && r->reservation_id != 0) {  // the defect: commit it and see the pool pinned
    auto p = Payload(Key(1));
    std::memcpy(pool_.data() + r->offsets[0], p.data(), p.size());
    ASSERT_TRUE(store_->Commit(r->reservation_id, {BlockChecksum(p.data(), p.size())}).ok());
  }
  // Nothing is pinned: chains as long as the pool fit, one after the other.
  const std::vector<ReserveOutcome> both(2, ReserveOutcome::kReserved);
  EXPECT_EQ(Put(Ns(1), {Key(2), Key(3)}), both);
  EXPECT_EQ(Put(Ns(1), {Key(4), Key(5)}), both);
}

TEST_F(StoreTest, AllPinnedMeansNoSpaceForTheRestOfTheChain) {
  Make(2);
  Put(Ns(1), {Key(1)});
  auto l = store_->Lookup(Ns(1), {Key(1)}, true);
  auto r = store_->Reserve(Ns(1), {Key(5), Key(6), Key(7)}, std::nullopt, kSlot);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->outcomes,
            (std::vector<ReserveOutcome>{ReserveOutcome::kReserved, ReserveOutcome::kNoSpace,
                                         ReserveOutcome::kNoSpace}));
  EXPECT_TRUE(store_->Abort(r->reservation_id).ok());
  EXPECT_TRUE(store_->Release(l->lease_id).ok());
}

TEST_F(StoreTest, SpillAndPromote) {
  Make(2, /*spill=*/true, /*spill_payload=*/16 * kSlot);
  Put(Ns(1), {Key(1), Key(2)});
  // The spiller wrote the chain ahead of eviction: it is on disk and still in memory.
  StoreStats s = store_->Stats();
  EXPECT_TRUE(s.spill_online);
  EXPECT_EQ(s.spill_writes, 2u);
  EXPECT_EQ(s.spill_bytes, 2 * kSlot);
  EXPECT_EQ(s.blocks_in_memory, 2u);
  Put(Ns(1), {Key(3), Key(4)});  // evicts the first chain to the spill tier, without I/O
  s = store_->Stats();
  EXPECT_EQ(s.spills, 2u);
  EXPECT_EQ(s.blocks_spilled, 2u);
  EXPECT_EQ(s.spill_writes, 4u);
  EXPECT_EQ(s.spill_bytes, 4 * kSlot);
  EXPECT_EQ(s.evictions, 0u);
  // A hit on spilled blocks promotes them (the other chain goes to disk to make room).
  auto l = store_->Lookup(Ns(1), {Key(1), Key(2)}, true);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->hit_count, 2u);
  EXPECT_EQ(l->promoted, 2u);
  ASSERT_TRUE(store_->Release(l->lease_id).ok());
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2)}), 2u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(3), Key(4)}), 2u);
  s = store_->Stats();
  EXPECT_EQ(s.promotions, 4u);
  EXPECT_EQ(s.spill_writes, 4u);  // promoted blocks keep their disk copy: no rewrite
  EXPECT_EQ(s.blocks_in_memory + s.blocks_spilled, 4u);
}

TEST_F(StoreTest, SpillCapacityDropsOldestLeaves) {
  Make(1, /*spill=*/true, /*spill_payload=*/3 * kSlot);
  for (uint8_t i = 1; i <= 4; ++i) Put(Ns(1), {Key(i)});
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.spills, 3u);
  EXPECT_EQ(s.spill_drops, 1u);
  EXPECT_LE(s.spill_bytes, 3 * kSlot);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);  // the oldest was dropped
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(2)}), 1u);
}

TEST_F(StoreTest, SpillMinHitsKeepsColdBlocksOffDisk) {
  options_.spill_min_hits = 1;
  Make(1, /*spill=*/true, /*spill_payload=*/8 * kSlot);
  Put(Ns(1), {Key(1)});
  Put(Ns(1), {Key(2)});  // Key(1) was never read: evicted, not spilled
  ASSERT_EQ(GetAndCheck(Ns(1), {Key(2)}), 1u);
  Put(Ns(1), {Key(3)});  // Key(2) earned its place on disk
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.spills, 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(2)}), 1u);
}

TEST_F(StoreTest, RecoverRebuildsIndexFromSpill) {
  Make(2, /*spill=*/true, /*spill_payload=*/16 * kSlot);
  Put(Ns(1), {Key(1), Key(2)});
  Put(Ns(2), {Key(7)}, std::nullopt);
  EXPECT_EQ(store_->SpillAll(), 2u);  // the spiller had written both already
  store_.reset();
  // "Restart": a fresh store over the same spill directory.
  Make(2, /*spill=*/true, /*spill_payload=*/16 * kSlot);
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.blocks_spilled, 3u);
  EXPECT_EQ(s.namespaces, 2u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2)}), 2u);
  EXPECT_EQ(GetAndCheck(Ns(2), {Key(7)}), 1u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(7)}), 0u);
}

// Issue 10, defect 8: the shutdown spill wrote the most recently used blocks first, which are
// the deepest of each chain, so after a restart a chain's lookup hit 0 blocks while its
// suffix was on disk.
TEST_F(StoreTest, ShutdownSpillWritesWholePrefixesRootsFirst) {
  options_.spill_min_hits = 1000;  // the spiller writes nothing ahead: SpillAll does it all
  Make(16, /*spill=*/true, /*spill_payload=*/6 * kSlot);
  for (uint8_t c = 1; c <= 3; ++c) {
    Put(Ns(1), {Key(c, 0), Key(c, 1), Key(c, 2), Key(c, 3)});
  }
  EXPECT_EQ(store_->Stats().spill_writes, 0u);
  EXPECT_EQ(store_->SpillAll(), 6u);
  store_.reset();
  Make(16, /*spill=*/true, /*spill_payload=*/6 * kSlot);
  ASSERT_EQ(store_->Stats().blocks_spilled, 6u);
  uint32_t hits = 0;
  for (uint8_t c = 1; c <= 3; ++c) {
    const uint32_t h = GetAndCheck(Ns(1), {Key(c, 0), Key(c, 1), Key(c, 2), Key(c, 3)});
    EXPECT_EQ(h, 2u) << "chain " << int{c};
    hits += h;
  }
  EXPECT_EQ(hits, 6u) << "every block on disk is reachable from its root";
}

// Issue 10, defect 3: blocks recovered from the spill tier were trusted as they were; with a
// smaller slot size after a restart, promoting one overflowed its slot into the next.
TEST_F(StoreTest, RecoveredBlocksLargerThanASlotAreDropped) {
  constexpr uint64_t kBig = 2 * kSlot;
  Make(4, /*spill=*/true, /*spill_payload=*/16 * kBig, /*slot_bytes=*/kBig);
  auto r = store_->Reserve(Ns(1), {Key(1)}, std::nullopt, kBig);
  ASSERT_TRUE(r.ok());
  auto p = Payload(Key(1), kBig);
  std::memcpy(pool_.data() + r->offsets[0], p.data(), kBig);
  ASSERT_TRUE(store_->Commit(r->reservation_id, {BlockChecksum(p.data(), kBig)}).ok());
  store_->WaitForSpiller();
  store_->SpillAll();
  store_.reset();

  Make(4, /*spill=*/true, /*spill_payload=*/16 * kBig, /*slot_bytes=*/kSlot);
  EXPECT_EQ(store_->Stats().blocks_spilled, 0u);
  Put(Ns(1), {Key(2)});
  auto l = store_->Lookup(Ns(1), {Key(1)}, /*lease=*/true);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->hit_count, 0u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(2)}), 1u);  // its neighbour is intact
  store_->WaitForSpiller();
  store_.reset();
  // The bad record was deleted, not only skipped.
  Make(4, /*spill=*/true, /*spill_payload=*/16 * kBig, /*slot_bytes=*/kSlot);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
}

TEST_F(StoreTest, CorruptSpilledBlockIsAMissNotWrongBytes) {
  Make(1, /*spill=*/true, /*spill_payload=*/8 * kSlot);
  Put(Ns(1), {Key(1)});
  Put(Ns(1), {Key(2)});  // Key(1) spilled
  store_.reset();
  // Between runs: other bytes of the same size under Key(1)'s meta.
  {
    auto db = SpillStore::Open(dir_.string(), options_.spill_capacity_bytes);
    ASSERT_TRUE(db.ok()) << db.status();
    SpillMeta meta;
    meta.ns = Ns(1);
    meta.size = kSlot;
    auto p1 = Payload(Key(1));
    meta.checksum = BlockChecksum(p1.data(), kSlot);
    auto junk = Payload(Key(99));
    ASSERT_TRUE((*db)->Put(Key(1), meta, junk.data(), kSlot).ok());
  }
  Make(1, /*spill=*/true, /*spill_payload=*/8 * kSlot);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.checksum_failures, 1u);
  EXPECT_TRUE(s.spill_online);  // one bad block costs that block, not the tier
  EXPECT_EQ(s.blocks_in_memory + s.blocks_spilled, 1u);  // the bad copy is forgotten
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1)}), 0u);
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(2)}), 1u);
}

TEST_F(StoreTest, DropNamespaceKeepsPinnedBlocks) {
  Make(8);
  Put(Ns(1), {Key(1), Key(2)});
  Put(Ns(2), {Key(3)});
  auto l = store_->Lookup(Ns(1), {Key(1)}, true);
  DropResult d = store_->DropNamespace(Ns(1));
  EXPECT_EQ(d.dropped, 1u);
  EXPECT_EQ(d.pinned_kept, 1u);
  EXPECT_TRUE(store_->Release(l->lease_id).ok());
  EXPECT_EQ(GetAndCheck(Ns(1), {Key(1), Key(2)}), 1u);
  EXPECT_EQ(GetAndCheck(Ns(2), {Key(3)}), 1u);
}

TEST_F(StoreTest, ConcurrentWritersAndReadersKeepInvariants) {
  Make(16, /*spill=*/true, /*spill_payload=*/32 * kSlot);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        uint8_t a = rng() % 24;
        std::vector<BlockKey> keys = {Key(a, 0), Key(a, 1)};
        if (rng() % 2) {
          auto r = store_->Reserve(Ns(1), keys, std::nullopt, kSlot);
          if (!r.ok()) {
            ++bad;
            continue;
          }
          std::vector<uint64_t> sums;
          for (size_t k = 0; k < keys.size(); ++k) {
            if (r->outcomes[k] != ReserveOutcome::kReserved) continue;
            auto p = Payload(keys[k]);
            std::memcpy(pool_.data() + r->offsets[k], p.data(), kSlot);
            sums.push_back(BlockChecksum(p.data(), kSlot));
          }
          if (r->reservation_id && !store_->Commit(r->reservation_id, sums).ok()) ++bad;
        } else {
          auto l = store_->Lookup(Ns(1), keys, true);
          if (!l.ok()) {
            ++bad;
            continue;
          }
          for (uint32_t k = 0; k < l->hit_count; ++k) {
            auto p = Payload(keys[k]);
            if (std::memcmp(pool_.data() + l->blocks[k].offset, p.data(), kSlot) != 0) ++bad;
          }
          if (l->lease_id && !store_->Release(l->lease_id).ok()) ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  StoreStats s = store_->Stats();
  EXPECT_EQ(s.active_leases, 0u);
  EXPECT_EQ(s.active_reservations, 0u);
  EXPECT_EQ(s.slots_used, s.blocks_in_memory);
  EXPECT_GE(s.spill_bytes, s.blocks_spilled * kSlot);  // + memory blocks with a disk copy
  EXPECT_LE(s.spill_bytes, (s.blocks_spilled + s.blocks_in_memory) * kSlot);
}

}  // namespace
}  // namespace kvtier::cachestore
