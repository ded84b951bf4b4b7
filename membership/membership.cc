#include "membership/membership.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log_limiter.h"
#include "common/logging.h"
#include "nlohmann/json.hpp"

namespace kvtier::membership {
namespace {

using json = nlohmann::json;

bool ValidName(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' ||
           c == '-';
  });
}

absl::Status CheckMember(const Member& m) {
  if (!ValidName(m.role)) {
    return absl::InvalidArgumentError(absl::StrCat("member role '", m.role, "' is not a name"));
  }
  if (!ValidName(m.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("member id '", m.id, "': want 1..128 of [A-Za-z0-9._:-]"));
  }
  if (m.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("member ", m.role, "/", m.id, ": no address"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string RolePrefix(const std::string& prefix, const std::string& role) {
  return absl::StrCat(prefix, "/members/", role, "/");
}

std::string MemberKey(const std::string& prefix, const Member& member) {
  return RolePrefix(prefix, member.role) + member.id;
}

std::string EncodeMember(const Member& m) {
  return json{{"role", m.role},
              {"id", m.id},
              {"address", m.address},
              {"data_address", m.data_address},
              {"metrics_address", m.metrics_address},
              {"model", m.model},
              {"capacity_bytes", m.capacity_bytes},
              {"load", m.load}}
      .dump();
}

absl::StatusOr<Member> DecodeMember(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("member: not a JSON object");
  }
  Member m;
  try {
    m.role = j.value("role", "");
    m.id = j.value("id", "");
    m.address = j.value("address", "");
    m.data_address = j.value("data_address", "");
    m.metrics_address = j.value("metrics_address", "");
    m.model = j.value("model", "");
    m.capacity_bytes = j.value("capacity_bytes", int64_t{0});
    m.load = j.value("load", 0.0);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("member: ", e.what()));
  }
  if (absl::Status s = CheckMember(m); !s.ok()) return s;
  return m;
}

// ---- Registration ----

absl::StatusOr<std::unique_ptr<Registration>> Registration::Start(std::unique_ptr<EtcdClient> etcd,
                                                                  std::string prefix, Member member,
                                                                  absl::Duration ttl,
                                                                  Refresh refresh) {
  if (absl::Status s = CheckMember(member); !s.ok()) return s;
  if (ttl < absl::Seconds(2)) {
    return absl::InvalidArgumentError("membership lease ttl must be >= 2 s");
  }
  std::unique_ptr<Registration> r(new Registration(std::move(etcd), std::move(prefix),
                                                   std::move(member), ttl, std::move(refresh)));
  r->thread_ = std::thread([p = r.get()] { p->Run(); });
  return r;
}

Registration::Registration(std::unique_ptr<EtcdClient> etcd, std::string prefix, Member member,
                           absl::Duration ttl, Refresh refresh)
    : etcd_(std::move(etcd)),
      prefix_(std::move(prefix)),
      ttl_(ttl),
      refresh_(std::move(refresh)),
      member_(std::move(member)) {}

Registration::~Registration() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
  if (lease_ == 0) return;
  if (absl::Status s = etcd_->RevokeLease(lease_); !s.ok()) {
    absl::MutexLock l(&mu_);
    spdlog::warn("membership: revoking the lease of {}/{} failed ({}): it expires in {}",
                 member_.role, member_.id, s.ToString(), absl::FormatDuration(ttl_));
  }
}

void Registration::Update(const Member& member) {
  absl::MutexLock l(&mu_);
  Member next = member;
  next.role = member_.role;
  next.id = member_.id;
  if (next == member_) return;
  member_ = std::move(next);
  dirty_ = true;
}

void Registration::Run() {
  LogLimiter failures;
  absl::Duration wait = absl::ZeroDuration();
  while (!stop_.WaitForNotificationWithTimeout(wait)) {
    if (refresh_) {
      Member next;
      {
        absl::MutexLock l(&mu_);
        next = member_;
      }
      refresh_(&next);
      Update(next);
    }
    Member member;
    bool dirty;
    {
      absl::MutexLock l(&mu_);
      member = member_;
      dirty = dirty_;
      dirty_ = false;
    }
    absl::Status s;
    if (lease_ != 0) {
      s = etcd_->KeepAlive(lease_);
      if (absl::IsNotFound(s)) {
        // Expired while etcd was away (or etcd lost its data): register anew.
        spdlog::warn("membership: the lease of {}/{} expired; registering again", member.role,
                     member.id);
        lease_ = 0;
        registered_.store(false);
      }
    }
    if (lease_ == 0 && (s.ok() || absl::IsNotFound(s))) {
      absl::StatusOr<int64_t> lease = etcd_->GrantLease(ttl_);
      s = lease.status();
      if (lease.ok()) {
        lease_ = *lease;
        dirty = true;
      }
    }
    if (s.ok() && dirty) {
      s = etcd_->Put(MemberKey(prefix_, member), EncodeMember(member), lease_).status();
      if (s.ok() && !registered_.exchange(true)) {
        spdlog::info("membership: registered {}/{} at {} (lease ttl {})", member.role, member.id,
                     member.address, absl::FormatDuration(ttl_));
      }
    }
    if (!s.ok()) {
      if (dirty) {
        absl::MutexLock l(&mu_);
        dirty_ = true;  // write it on the next round
      }
      failures.Log(spdlog::level::warn, "membership: etcd call for {}/{} failed: {}", member.role,
                   member.id, s.ToString());
      wait = std::min(ttl_ / 3, MemberWatcher::kRetryDelay * 2);
      continue;
    }
    wait = ttl_ / 3;
  }
}

// ---- MemberWatcher ----

std::unique_ptr<MemberWatcher> MemberWatcher::Start(std::unique_ptr<EtcdClient> etcd,
                                                    std::string prefix, std::string role,
                                                    Callback on_change, MetricsRegistry* metrics) {
  std::unique_ptr<MemberWatcher> w(new MemberWatcher(
      std::move(etcd), std::move(prefix), std::move(role), std::move(on_change), metrics));
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

MemberWatcher::MemberWatcher(std::unique_ptr<EtcdClient> etcd, std::string prefix, std::string role,
                             Callback on_change, MetricsRegistry* metrics)
    : etcd_(std::move(etcd)), prefix_(RolePrefix(prefix, role)), on_change_(std::move(on_change)) {
  if (metrics != nullptr) {
    const MetricLabels labels = {{"role", role}};
    up_gauge_ = metrics->AddGauge("kvtier_membership_etcd_up",
                                  "1 while etcd answers the watch of a role's members; 0 while "
                                  "the last set seen is served",
                                  labels);
    members_gauge_ =
        metrics->AddGauge("kvtier_membership_members", "Live members of a role", labels);
    errors_ = metrics->AddCounter("kvtier_membership_etcd_errors_total",
                                  "Failed etcd reads and watches", labels);
  }
}

MemberWatcher::~MemberWatcher() {
  stopping_.store(true);
  etcd_->CancelWatch();
  if (thread_.joinable()) thread_.join();
}

std::vector<Member> MemberWatcher::members() const {
  absl::MutexLock l(&mu_);
  std::vector<Member> out;
  out.reserve(members_.size());
  for (const auto& [key, m] : members_) out.push_back(m);
  return out;
}

bool MemberWatcher::WaitUntil(const std::function<bool(const std::vector<Member>&)>& pred,
                              absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (!pred(members())) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

bool MemberWatcher::Apply(const std::string& key, const std::string* value) {
  if (value == nullptr) return members_.erase(key) > 0;
  absl::StatusOr<Member> m = DecodeMember(*value);
  if (!m.ok() || key != prefix_ + m->id) {
    KVTIER_LOG_LIMITED(warn, "membership: ignoring key {}: {}", key,
                       m.ok() ? "its id does not match the key" : m.status().ToString());
    return members_.erase(key) > 0;
  }
  auto it = members_.find(key);
  if (it == members_.end() && members_.size() >= kMaxMembers) {
    KVTIER_LOG_LIMITED(warn, "membership: more than {} members under {}; ignoring {}", kMaxMembers,
                       prefix_, key);
    return false;
  }
  if (it != members_.end() && it->second == *m) return false;
  members_[key] = *std::move(m);
  return true;
}

void MemberWatcher::Publish() {
  std::vector<Member> set = members();
  if (members_gauge_ != nullptr) members_gauge_->Set(static_cast<double>(set.size()));
  if (on_change_) on_change_(set);
}

void MemberWatcher::SetConnected(bool up, const absl::Status& why) {
  const bool was = connected_.exchange(up);
  if (up_gauge_ != nullptr) up_gauge_->Set(up ? 1 : 0);
  if (!up) {
    if (errors_ != nullptr) errors_->Increment();
    KVTIER_LOG_LIMITED(warn,
                       "membership: etcd does not answer for {} ({}); serving the last {} "
                       "members seen",
                       prefix_, why.ToString(), members().size());
  } else if (!was) {
    spdlog::info("membership: watching {} ({} members)", prefix_, members().size());
  }
}

void MemberWatcher::Run() {
  bool published = false;
  while (!stopping_.load()) {
    // Read the whole set, then follow the changes from the revision after it.
    absl::StatusOr<EtcdClient::Range> range = etcd_->GetPrefix(prefix_);
    if (!range.ok()) {
      SetConnected(false, range.status());
      for (absl::Time until = absl::Now() + kRetryDelay;
           !stopping_.load() && absl::Now() < until;) {
        absl::SleepFor(absl::Milliseconds(20));
      }
      continue;
    }
    bool changed;
    {
      absl::MutexLock l(&mu_);
      std::map<std::string, Member> before = std::move(members_);
      members_.clear();
      for (const KeyValue& kv : range->kvs) Apply(kv.key, &kv.value);
      changed = before != members_;
    }
    SetConnected(true, absl::OkStatus());
    if (changed || !published) Publish();
    published = true;
    int64_t revision = range->revision;
    while (!stopping_.load()) {
      absl::Status s = etcd_->Watch(prefix_, revision + 1, kIdleTimeout,
                                    [&](const std::vector<WatchEvent>& events, int64_t at) {
                                      bool any = false;
                                      {
                                        absl::MutexLock l(&mu_);
                                        for (const WatchEvent& e : events) {
                                          any |= Apply(e.kv.key, e.deleted ? nullptr : &e.kv.value);
                                        }
                                      }
                                      revision = std::max(revision, at);
                                      if (any) Publish();
                                    });
      if (stopping_.load()) return;
      if (absl::IsDeadlineExceeded(s)) continue;  // quiet: watch again from `revision`
      if (!absl::IsOutOfRange(s)) SetConnected(false, s);
      break;  // read the whole set again
    }
  }
}

}  // namespace kvtier::membership
