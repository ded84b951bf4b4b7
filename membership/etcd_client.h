// A client of etcd's v3 API through its JSON gateway: POST /v3/kv/{range,put,deleterange},
// /v3/lease/{grant,keepalive,revoke} and the streaming /v3/watch, over cpp-httplib, keys and
// values base64 in JSON as the gateway takes them (docs/membership.md says why the gateway and
// not gRPC). Enough of etcd for membership: leased keys, prefix reads, prefix watches.
//
// Every call goes to the endpoints in order until one answers (an etcd cluster lists its
// members); a call that no endpoint answers is Unavailable. Unary calls are bounded by
// EtcdOptions::timeout; a watch by its idle timeout.
//
// Ownership: value-like; holds only its options. Thread-safety: every method may be called from
// any thread concurrently (each call opens its own connection); CancelWatch stops a Watch
// running on another thread.
#ifndef KVTIER_MEMBERSHIP_ETCD_CLIENT_H_
#define KVTIER_MEMBERSHIP_ETCD_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace httplib {
class Client;
}

namespace kvtier::membership {

struct EtcdOptions {
  // "http://host:port" or "https://host:port", tried in order. Required.
  std::vector<std::string> endpoints;
  // https: the CA that signed etcd's certificate (empty: the system's), and a client certificate
  // and key for an etcd started with --client-cert-auth (empty: none). Default: empty.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Bound on connecting and on each unary call. Default: 2 s.
  absl::Duration timeout = absl::Seconds(2);
};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t mod_revision = 0;
  int64_t lease = 0;
};

struct WatchEvent {
  bool deleted = false;  // false: a put
  KeyValue kv;           // a delete carries the key and its revision only
};

class EtcdClient {
 public:
  // Most keys a prefix read returns, and the largest response body taken (a bound against a
  // runaway prefix).
  static constexpr int64_t kMaxRangeKeys = 10000;
  static constexpr size_t kMaxResponseBytes = 64 << 20;

  // InvalidArgument when there is no endpoint or one is not an http(s)://host:port URL.
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(EtcdOptions options);
  ~EtcdClient();

  const EtcdOptions& options() const { return options_; }

  // A lease of `ttl` (whole seconds, at least 1); its id.
  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl);
  // Renews `lease` for its ttl. NotFound when it has expired or was revoked.
  absl::Status KeepAlive(int64_t lease);
  // Ends `lease` and deletes its keys now. OK when it no longer exists.
  absl::Status RevokeLease(int64_t lease);

  // Writes `key` = `value`, attached to `lease` (0: none); the revision of the write.
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0);
  absl::Status Delete(const std::string& key);

  struct Range {
    std::vector<KeyValue> kvs;  // in key order
    int64_t revision = 0;       // the store's revision the read saw
  };
  // Every key under `prefix`. ResourceExhausted past kMaxRangeKeys keys.
  absl::StatusOr<Range> GetPrefix(const std::string& prefix);

  // Streams the changes of keys under `prefix` from `start_revision` on, calling `on_events`
  // (on this thread) with each batch and the revision it brings the reader to, until:
  //   CancelWatch() (returns OK), no message for `idle_timeout` (DeadlineExceeded: etcd or the
  //   link is gone quietly; watch again from the last revision), `start_revision` compacted
  //   away (OutOfRange: read the prefix again), or the stream failing (Unavailable).
  // One Watch at a time per client.
  absl::Status Watch(
      const std::string& prefix, int64_t start_revision, absl::Duration idle_timeout,
      const std::function<void(const std::vector<WatchEvent>&, int64_t revision)>& on_events);
  // Stops the running Watch, which returns OK; one called before the Watch starts stops it as
  // it starts. Any thread.
  void CancelWatch();

 private:
  explicit EtcdClient(EtcdOptions options) : options_(std::move(options)) {}
  std::unique_ptr<httplib::Client> Connect(const std::string& endpoint,
                                           absl::Duration read_timeout) const;
  // POSTs `body` to `path` on the first endpoint that answers; the parsed JSON response text.
  absl::StatusOr<std::string> Call(const std::string& path, const std::string& body) const;

  const EtcdOptions options_;
  absl::Mutex watch_mu_;
  httplib::Client* watch_client_ ABSL_GUARDED_BY(watch_mu_) = nullptr;
  bool watch_cancelled_ ABSL_GUARDED_BY(watch_mu_) = false;
};

}  // namespace kvtier::membership

#endif  // KVTIER_MEMBERSHIP_ETCD_CLIENT_H_
