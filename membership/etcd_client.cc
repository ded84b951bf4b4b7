#include "membership/etcd_client.h"

#include <httplib.h>

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/host_port.h"
#include "nlohmann/json.hpp"

namespace kvtier::membership {
namespace {

using json = nlohmann::json;

std::string B64(const std::string& s) { return absl::Base64Escape(s); }

// The end of the range of keys that start with `prefix` (etcd's range_end): the prefix with its
// last byte below 0xff incremented and what follows dropped; "\0" (every key) when there is none.
std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char c = static_cast<unsigned char>(end.back());
    if (c < 0xff) {
      end.back() = static_cast<char>(c + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');
}

// The gateway writes int64 fields as JSON strings; absent means 0.
int64_t Int(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) return 0;
  const json& v = j[field];
  if (v.is_number_integer()) return v.get<int64_t>();
  int64_t n = 0;
  if (v.is_string() && absl::SimpleAtoi(v.get<std::string>(), &n)) return n;
  return 0;
}

absl::StatusOr<std::string> Unbase64(const json& j, const char* field) {
  if (!j.is_object() || !j.contains(field)) return std::string();
  if (!j[field].is_string())
    return absl::DataLossError(absl::StrCat("etcd: '", field, "' not a string"));
  std::string out;
  if (!absl::Base64Unescape(j[field].get<std::string>(), &out)) {
    return absl::DataLossError(absl::StrCat("etcd: '", field, "' is not base64"));
  }
  return out;
}

absl::StatusOr<KeyValue> ParseKv(const json& j) {
  KeyValue kv;
  absl::StatusOr<std::string> key = Unbase64(j, "key");
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> value = Unbase64(j, "value");
  if (!value.ok()) return value.status();
  kv.key = *std::move(key);
  kv.value = *std::move(value);
  kv.mod_revision = Int(j, "mod_revision");
  kv.lease = Int(j, "lease");
  return kv;
}

absl::StatusOr<json> ParseJson(const std::string& text, absl::string_view what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(
        absl::StrCat("etcd ", what, ": not a JSON object: ", text.substr(0, 200)));
  }
  return j;
}

// A POST of `body` (JSON) to `path` that records the response's status in *status as the headers
// arrive; the caller adds the content receiver.
httplib::Request JsonPost(const std::string& path, std::string body, int* status) {
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = std::move(body);
  req.set_header("Content-Type", "application/json");
  req.response_handler = [status](const httplib::Response& res) {
    *status = res.status;
    return true;
  };
  return req;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(EtcdOptions options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("etcd: no endpoint");
  for (const std::string& e : options.endpoints) {
    absl::string_view rest(e);
    if (!absl::ConsumePrefix(&rest, "http://") && !absl::ConsumePrefix(&rest, "https://")) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd endpoint '", e, "': not http://host:port or https://host:port"));
    }
    absl::StatusOr<HostPort> hp = ParseHostPort(rest);
    if (!hp.ok() || hp->port == 0) {
      return absl::InvalidArgumentError(absl::StrCat("etcd endpoint '", e, "': bad host:port"));
    }
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("etcd: timeout must be > 0");
  }
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(options)));
}

EtcdClient::~EtcdClient() = default;

std::unique_ptr<httplib::Client> EtcdClient::Connect(const std::string& endpoint,
                                                     absl::Duration read_timeout) const {
  auto cli = options_.cert_file.empty() ? std::make_unique<httplib::Client>(endpoint)
                                        : std::make_unique<httplib::Client>(
                                              endpoint, options_.cert_file, options_.key_file);
  if (absl::StartsWith(endpoint, "https://")) {
    if (!options_.ca_file.empty()) cli->set_ca_cert_path(options_.ca_file);
    cli->enable_server_certificate_verification(true);
  }
  const auto us = [](absl::Duration d) { return absl::ToInt64Microseconds(d); };
  cli->set_connection_timeout(0, us(options_.timeout));
  cli->set_read_timeout(0, us(read_timeout));
  cli->set_write_timeout(0, us(options_.timeout));
  return cli;
}

absl::StatusOr<std::string> EtcdClient::Call(const std::string& path,
                                             const std::string& body) const {
  std::string errors;
  for (const std::string& endpoint : options_.endpoints) {
    std::unique_ptr<httplib::Client> cli = Connect(endpoint, options_.timeout);
    // The gateway ends an error response with a chunked trailer (Grpc-Trailer-Content-Type),
    // which cpp-httplib 0.11 reports as a read error after the whole body arrived: the status
    // and body are taken as they arrive, and a read error after a complete JSON body is no
    // error.
    int status = 0;
    std::string response;
    bool too_big = false;
    httplib::Request req = JsonPost(path, body, &status);
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      response.append(data, n);
      too_big = response.size() > kMaxResponseBytes;
      return !too_big;
    };
    httplib::Result r = cli->send(req);
    if (too_big) {
      return absl::ResourceExhaustedError(
          absl::StrCat("etcd ", path, ": a response over ", kMaxResponseBytes, " bytes"));
    }
    if (!r && !(r.error() == httplib::Error::Read && status != 0 && json::accept(response))) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", endpoint, ": ",
                      httplib::to_string(r.error()));
      continue;
    }
    if (status != 200) {
      // The gateway's error body carries the gRPC code, which absl's codes equal.
      json j = json::parse(response, nullptr, false);
      std::string message = response.substr(0, 300);
      int code = static_cast<int>(absl::StatusCode::kUnknown);
      if (j.is_object()) {
        if (j.contains("message") && j["message"].is_string()) message = j["message"];
        if (j.contains("code") && j["code"].is_number_integer()) code = j["code"];
      }
      // No leader (an election, or a member cut off from the others): try the next member.
      if (code == static_cast<int>(absl::StatusCode::kUnavailable) || status == 503) {
        absl::StrAppend(&errors, errors.empty() ? "" : "; ", endpoint, ": ", message);
        continue;
      }
      if (code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
        code = static_cast<int>(absl::StatusCode::kUnknown);
      }
      return absl::Status(static_cast<absl::StatusCode>(code),
                          absl::StrCat("etcd ", path, ": HTTP ", status, ": ", message));
    }
    return response;
  }
  return absl::UnavailableError(absl::StrCat("etcd ", path, ": ", errors));
}

absl::StatusOr<int64_t> EtcdClient::GrantLease(absl::Duration ttl) {
  const int64_t seconds = std::max<int64_t>(1, absl::ToInt64Seconds(ttl));
  absl::StatusOr<std::string> text = Call("/v3/lease/grant", json{{"TTL", seconds}}.dump());
  if (!text.ok()) return text.status();
  absl::StatusOr<json> j = ParseJson(*text, "lease grant");
  if (!j.ok()) return j.status();
  const int64_t id = Int(*j, "ID");
  if (id == 0) return absl::DataLossError("etcd lease grant: no lease id in " + *text);
  return id;
}

absl::Status EtcdClient::KeepAlive(int64_t lease) {
  absl::StatusOr<std::string> text =
      Call("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump());
  if (!text.ok()) return text.status();
  absl::StatusOr<json> j = ParseJson(*text, "lease keepalive");
  if (!j.ok()) return j.status();
  // The gateway wraps the stream's one message in "result"; a lease that is gone has no TTL.
  const json& result = j->contains("result") ? (*j)["result"] : *j;
  if (Int(result, "TTL") <= 0) {
    return absl::NotFoundError(absl::StrCat("etcd lease ", lease, " has expired"));
  }
  return absl::OkStatus();
}

absl::Status EtcdClient::RevokeLease(int64_t lease) {
  absl::StatusOr<std::string> text =
      Call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump());
  if (absl::IsNotFound(text.status())) return absl::OkStatus();
  return text.status();
}

absl::StatusOr<int64_t> EtcdClient::Put(const std::string& key, const std::string& value,
                                        int64_t lease) {
  json body = {{"key", B64(key)}, {"value", B64(value)}};
  if (lease != 0) body["lease"] = std::to_string(lease);
  absl::StatusOr<std::string> text = Call("/v3/kv/put", body.dump());
  if (!text.ok()) return text.status();
  absl::StatusOr<json> j = ParseJson(*text, "put");
  if (!j.ok()) return j.status();
  return Int((*j)["header"], "revision");
}

absl::Status EtcdClient::Delete(const std::string& key) {
  return Call("/v3/kv/deleterange", json{{"key", B64(key)}}.dump()).status();
}

absl::StatusOr<EtcdClient::Range> EtcdClient::GetPrefix(const std::string& prefix) {
  json body = {{"key", B64(prefix)},
               {"range_end", B64(PrefixEnd(prefix))},
               {"limit", std::to_string(kMaxRangeKeys + 1)}};
  absl::StatusOr<std::string> text = Call("/v3/kv/range", body.dump());
  if (!text.ok()) return text.status();
  absl::StatusOr<json> j = ParseJson(*text, "range");
  if (!j.ok()) return j.status();
  Range range;
  range.revision = Int((*j)["header"], "revision");
  if (j->contains("kvs") && (*j)["kvs"].is_array()) {
    if ((*j)["kvs"].size() > static_cast<size_t>(kMaxRangeKeys)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("etcd: more than ", kMaxRangeKeys, " keys under '", prefix, "'"));
    }
    for (const json& e : (*j)["kvs"]) {
      absl::StatusOr<KeyValue> kv = ParseKv(e);
      if (!kv.ok()) return kv.status();
      range.kvs.push_back(*std::move(kv));
    }
  }
  return range;
}

absl::Status EtcdClient::Watch(
    const std::string& prefix, int64_t start_revision, absl::Duration idle_timeout,
    const std::function<void(const std::vector<WatchEvent>&, int64_t)>& on_events) {
  json body = {{"create_request",
                {{"key", B64(prefix)},
                 {"range_end", B64(PrefixEnd(prefix))},
                 {"start_revision", std::to_string(start_revision)}}}};
  const std::string body_text = body.dump();
  std::string errors;
  for (const std::string& endpoint : options_.endpoints) {
    std::unique_ptr<httplib::Client> cli = Connect(endpoint, idle_timeout);
    {
      absl::MutexLock l(&watch_mu_);
      if (watch_cancelled_) {
        watch_cancelled_ = false;
        return absl::OkStatus();
      }
      watch_client_ = cli.get();
    }
    int status = 0;
    std::string buffer;
    absl::Status stream_error;  // what ended the stream from etcd's side
    bool created = false;
    httplib::Request req = JsonPost("/v3/watch", body_text, &status);
    // One JSON message per line: {"result": {"header": .., "created": true | "events": [..] |
    // "canceled": true, "compact_revision": ..}}.
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      buffer.append(data, n);
      if (buffer.size() > kMaxResponseBytes) {
        stream_error = absl::ResourceExhaustedError("etcd watch: a message over the size bound");
        return false;
      }
      if (status != 200) return true;
      size_t pos;
      while ((pos = buffer.find('\n')) != std::string::npos) {
        const std::string line = buffer.substr(0, pos);
        buffer.erase(0, pos + 1);
        if (line.empty()) continue;
        absl::StatusOr<json> j = ParseJson(line, "watch");
        if (!j.ok()) {
          stream_error = j.status();
          return false;
        }
        if (j->contains("error")) {
          stream_error = absl::UnavailableError("etcd watch: " + (*j)["error"].dump());
          return false;
        }
        const json& result = (*j)["result"];
        if (Int(result, "compact_revision") > 0) {
          stream_error = absl::OutOfRangeError(absl::StrCat("etcd watch: revision ", start_revision,
                                                            " was compacted (now ",
                                                            Int(result, "compact_revision"), ")"));
          return false;
        }
        if (result.is_object() && result.value("canceled", false)) {
          stream_error = absl::UnavailableError("etcd watch: canceled by etcd: " + line);
          return false;
        }
        if (result.is_object() && result.value("created", false)) created = true;
        std::vector<WatchEvent> events;
        if (result.is_object() && result.contains("events") && result["events"].is_array()) {
          for (const json& e : result["events"]) {
            absl::StatusOr<KeyValue> kv = ParseKv(e.value("kv", json::object()));
            if (!kv.ok()) {
              stream_error = kv.status();
              return false;
            }
            events.push_back({e.value("type", std::string()) == "DELETE", *std::move(kv)});
          }
        }
        if (!events.empty()) on_events(events, Int(result["header"], "revision"));
      }
      return true;
    };
    httplib::Result r = cli->send(req);
    bool cancelled;
    {
      absl::MutexLock l(&watch_mu_);
      watch_client_ = nullptr;
      cancelled = watch_cancelled_;
      watch_cancelled_ = false;
    }
    if (cancelled) return absl::OkStatus();
    if (!stream_error.ok()) return stream_error;
    if (r && status != 200) {
      return absl::FailedPreconditionError(
          absl::StrCat("etcd watch: HTTP ", status, ": ", buffer.substr(0, 200)));
    }
    if (!r && r.error() == httplib::Error::Read && created) {
      return absl::DeadlineExceededError(absl::StrCat("etcd watch: nothing from ", endpoint,
                                                      " for ", absl::FormatDuration(idle_timeout)));
    }
    if (created) {
      return absl::UnavailableError(
          absl::StrCat("etcd watch: the stream from ", endpoint, " ended",
                       r ? std::string() : ": " + httplib::to_string(r.error())));
    }
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", endpoint, ": ",
                    r ? absl::StrCat("HTTP ", status) : httplib::to_string(r.error()));
  }
  return absl::UnavailableError("etcd watch: " + errors);
}

void EtcdClient::CancelWatch() {
  absl::MutexLock l(&watch_mu_);
  watch_cancelled_ = true;
  if (watch_client_ != nullptr) watch_client_->stop();
}

}  // namespace kvtier::membership
