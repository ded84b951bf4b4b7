// Cluster membership through etcd (docs/membership.md): each store node and worker holds a
// leased key with what others need to reach and rank it (a Registration); clients and the
// router keep the live set of a role from a watch on the prefix (a MemberWatcher).
//
//   <prefix>/members/<role>/<id>  =  {"role":..,"id":..,"address":..,"data_address":..,
//                                     "metrics_address":..,"model":..,"capacity_bytes":..,
//                                     "load":..}
//
// A member that dies stops renewing its lease and its key is gone one ttl later; one that stops
// cleanly revokes its lease and is gone at once. etcd unreachable: a Registration keeps
// retrying (its key expires if the outage outlasts the ttl, and is written again on return);
// a MemberWatcher keeps serving the last set it saw, logs a warning and sets its metric
// kvtier_membership_etcd_up to 0.
//
// Ownership: both own a background thread and borrow the metrics registry (may be null), which
// must outlive them. Thread-safety: every public method is safe from any thread; callbacks run
// on the watcher's thread, one at a time.
#ifndef KVTIER_MEMBERSHIP_MEMBERSHIP_H_
#define KVTIER_MEMBERSHIP_MEMBERSHIP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "membership/etcd_client.h"

namespace kvtier::membership {

struct Member {
  std::string role;             // "store", "prefill", "decode", "router"
  std::string id;               // unique within the role: [A-Za-z0-9._:-]{1,128}
  std::string address;          // gRPC host:port (the router: its HTTP host:port)
  std::string data_address;     // store: the UCX data interface's address; else ""
  std::string metrics_address;  // Prometheus host:port, "" if none
  std::string model;            // workers: the served model; else ""
  int64_t capacity_bytes = 0;   // store: pool bytes; workers: KV cache bytes
  double load = 0;              // workers: requests running + waiting; store: pool use 0..1

  bool operator==(const Member&) const = default;
};

// The key of `member` under `prefix`, and the prefix of a role's keys.
std::string MemberKey(const std::string& prefix, const Member& member);
std::string RolePrefix(const std::string& prefix, const std::string& role);
// JSON text of a member, and back. InvalidArgument for a bad id or role, or bad JSON.
std::string EncodeMember(const Member& member);
absl::StatusOr<Member> DecodeMember(const std::string& text);

class Registration {
 public:
  // Updates a member's load before a renewal; runs on the registration's thread.
  using Refresh = std::function<void(Member*)>;
  // Writes `member` under a lease of `ttl` and renews it every ttl/3 from a thread, calling
  // `refresh` (may be null) first and writing the member again when it changed. Returns at
  // once: an etcd that does not answer is retried in the background (a warning each time).
  // InvalidArgument for a bad member or a ttl under 2 s.
  static absl::StatusOr<std::unique_ptr<Registration>> Start(std::unique_ptr<EtcdClient> etcd,
                                                             std::string prefix, Member member,
                                                             absl::Duration ttl,
                                                             Refresh refresh = nullptr);
  // Revokes the lease: the member is gone from every watcher at once.
  ~Registration();

  // Replaces the value (the load, say); written at the next renewal. The role and id stay.
  void Update(const Member& member);
  // Whether the key was written with a lease that is still renewed.
  bool registered() const { return registered_.load(); }

 private:
  Registration(std::unique_ptr<EtcdClient> etcd, std::string prefix, Member member,
               absl::Duration ttl, Refresh refresh);
  void Run();

  const std::unique_ptr<EtcdClient> etcd_;
  const std::string prefix_;
  const absl::Duration ttl_;
  const Refresh refresh_;
  absl::Mutex mu_;
  Member member_ ABSL_GUARDED_BY(mu_);
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> registered_{false};
  int64_t lease_ = 0;  // the thread's
  absl::Notification stop_;
  std::thread thread_;
};

class MemberWatcher {
 public:
  // The whole live set of the role after each change (and once at the first read).
  using Callback = std::function<void(const std::vector<Member>&)>;
  // Most members one watcher keeps (a bound against a runaway prefix).
  static constexpr size_t kMaxMembers = 4096;

  // Watches `role`'s members under `prefix` from a thread. Returns at once; until etcd first
  // answers the set is empty (a warning each retry). `metrics` may be null.
  static std::unique_ptr<MemberWatcher> Start(std::unique_ptr<EtcdClient> etcd, std::string prefix,
                                              std::string role, Callback on_change,
                                              MetricsRegistry* metrics);
  ~MemberWatcher();

  // The current set, in key order.
  std::vector<Member> members() const;
  // Whether the last call to etcd succeeded (false: serving the last set seen).
  bool connected() const { return connected_.load(); }
  // Waits up to `timeout` until `pred(members())` holds; for start-up and tests.
  bool WaitUntil(const std::function<bool(const std::vector<Member>&)>& pred,
                 absl::Duration timeout) const;

  // How long a watch may stay silent before it is opened again, and the wait between retries
  // while etcd does not answer.
  static constexpr absl::Duration kIdleTimeout = absl::Seconds(30);
  static constexpr absl::Duration kRetryDelay = absl::Milliseconds(500);

 private:
  MemberWatcher(std::unique_ptr<EtcdClient> etcd, std::string prefix, std::string role,
                Callback on_change, MetricsRegistry* metrics);
  void Run();
  // Applies a put or delete of `key`; false if nothing changed.
  bool Apply(const std::string& key, const std::string* value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Publish();
  void SetConnected(bool up, const absl::Status& why);

  const std::unique_ptr<EtcdClient> etcd_;
  const std::string prefix_;  // the role's
  const Callback on_change_;
  Gauge* up_gauge_ = nullptr;
  Gauge* members_gauge_ = nullptr;
  Counter* errors_ = nullptr;
  mutable absl::Mutex mu_;
  std::map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);  // by key
  std::atomic<bool> connected_{false};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace kvtier::membership

#endif  // KVTIER_MEMBERSHIP_MEMBERSHIP_H_
