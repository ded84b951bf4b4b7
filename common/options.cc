#include "common/options.h"

#include <filesystem>
#include <limits>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/host_port.h"
#include "common/parse_bytes.h"
#include "common/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace kvtier {
namespace {

absl::Status Bad(absl::string_view what, absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat("expected ", what, ", got '", text, "'"));
}

std::string ShowText(const std::string& s) { return s.empty() ? "none" : s; }

// Integers of any width: absl::SimpleAtoi refuses what does not fit.
template <typename Int>
Option::Access IntAccess(Int* field) {
  return {.type_name = "INT",
          .set = [field](absl::string_view text) -> absl::Status {
            if (!absl::SimpleAtoi(text, field)) return Bad("an integer", text);
            return absl::OkStatus();
          },
          .format = [field] { return absl::StrCat(*field); },
          .number = [field] { return static_cast<double>(*field); }};
}

// Byte sizes into an integer field of any width.
template <typename Int>
Option::Access BytesAccess(Int* field) {
  return {.type_name = "BYTES",
          .set = [field](absl::string_view text) -> absl::Status {
            KVTIER_ASSIGN_OR_RETURN(uint64_t bytes, ParseBytes(text));
            if (bytes > static_cast<uint64_t>(std::numeric_limits<Int>::max())) {
              return absl::InvalidArgumentError(absl::StrCat("'", text, "' is too large"));
            }
            *field = static_cast<Int>(bytes);
            return absl::OkStatus();
          },
          .format = [field] { return FormatBytes(static_cast<uint64_t>(*field)); },
          .number = [field] { return static_cast<double>(*field); }};
}

std::string FormatNumber(double v) { return absl::StrCat(v); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Option

Option::Option(std::string key, std::string help, Access access)
    : key_(std::move(key)), help_(std::move(help)), access_(std::move(access)) {
  flag_ = "--" + absl::StrReplaceAll(key_, {{"_", "-"}, {".", "-"}});
  default_text_ = access_.format();
  if (access_.strings) {
    const std::vector<std::string> values = access_.strings();
    default_empty_ = values.empty() || values[0].empty();
  }
}

Option& Option::Flag(std::string flag) {
  flag_ = std::move(flag);
  return *this;
}

Option& Option::OneOf(std::vector<std::string> values) {
  one_of_ = std::move(values);
  access_.type_name = absl::StrJoin(one_of_, "|");
  return *this;
}

Option& Option::Range(double min, double max) {
  min_ = min;
  max_ = max;
  return *this;
}

Option& Option::Min(double min) {
  min_ = min;
  return *this;
}

Option& Option::Positive() {
  positive_ = true;
  return *this;
}

Option& Option::HostPort(bool off_allowed) {
  host_port_ = true;
  off_allowed_ = off_allowed;
  access_.type_name = off_allowed ? "HOST:PORT|off" : "HOST:PORT";
  return *this;
}

Option& Option::Required() {
  required_ = true;
  return *this;
}

Option& Option::DirWith(std::string file) {
  dir_with_ = std::move(file);
  return *this;
}

std::string Option::Name() const { return absl::StrCat(key_, " (", flag_, ")"); }

absl::Status Option::SetText(absl::string_view text) {
  if (off_allowed_ && text == "off") text = "";
  return access_.set(text);
}

absl::Status Option::SetList(const std::vector<std::string>& values) {
  access_.clear();
  for (const std::string& v : values) KVTIER_RETURN_IF_ERROR(access_.set(v));
  return absl::OkStatus();
}

absl::Status Option::SetYaml(const YAML::Node& node) {
  if (access_.is_list) {
    std::vector<std::string> values;
    if (node.IsSequence()) {
      for (const YAML::Node& v : node) {
        if (!v.IsScalar()) return absl::InvalidArgumentError("expected a list of values");
        values.push_back(v.Scalar());
      }
    } else if (node.IsScalar()) {
      values.push_back(node.Scalar());
    } else if (!node.IsNull()) {
      return absl::InvalidArgumentError("expected a list of values");
    }
    return SetList(values);
  }
  if (node.IsNull()) return SetText("");
  if (!node.IsScalar()) return absl::InvalidArgumentError("expected a single value");
  return SetText(node.Scalar());
}

absl::Status Option::Check() const {
  auto bad = [&](auto&&... why) {
    return absl::InvalidArgumentError(absl::StrCat(Name(), ": ", why...));
  };
  if (access_.strings) {
    const std::vector<std::string> values = access_.strings();
    const bool empty = values.empty() || (!access_.is_list && values[0].empty());
    if (required_ && empty) {
      return absl::InvalidArgumentError(absl::StrCat(key_, " is required (", flag_, ")"));
    }
    for (const std::string& v : values) {
      if (!one_of_.empty() && std::find(one_of_.begin(), one_of_.end(), v) == one_of_.end()) {
        return bad("must be one of ", absl::StrJoin(one_of_, "|"), ", got '", v, "'");
      }
      std::error_code ec;
      if (!dir_with_.empty() && !v.empty() &&
          !std::filesystem::is_regular_file(std::filesystem::path(v) / dir_with_, ec)) {
        return bad("'", v, "' has no ", dir_with_);
      }
      if (host_port_ && !(off_allowed_ && v.empty())) {
        absl::StatusOr<kvtier::HostPort> hp = ParseHostPort(v);
        if (!hp.ok()) return bad(hp.status().message());
      }
    }
  }
  if (access_.number) {
    const double v = access_.number();
    if (positive_ && !(v > 0)) return bad("must be > 0, got ", FormatNumber(v));
    if (min_ && max_ && (v < *min_ || v > *max_)) {
      return bad("must be in [", FormatNumber(*min_), ", ", FormatNumber(*max_), "], got ",
                 FormatNumber(v));
    }
    if (min_ && v < *min_)
      return bad("must be >= ", FormatNumber(*min_), ", got ", FormatNumber(v));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// OptionTable: declarations

Option& OptionTable::Declare(std::string key, std::string help, Option::Access access) {
  options_.push_back(
      std::unique_ptr<Option>(new Option(std::move(key), std::move(help), std::move(access))));
  return *options_.back();
}

Option& OptionTable::Add(std::string key, std::string* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "TEXT",
                  .set =
                      [field](absl::string_view text) {
                        *field = std::string(text);
                        return absl::OkStatus();
                      },
                  .format = [field] { return ShowText(*field); },
                  .strings = [field] { return std::vector<std::string>{*field}; }});
}

Option& OptionTable::Add(std::string key, bool* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "BOOL",
                  .set = [field](absl::string_view text) -> absl::Status {
                    const std::string t = absl::AsciiStrToLower(text);
                    if (t == "on" || t == "off") {
                      *field = t == "on";
                    } else if (!absl::SimpleAtob(t, field)) {
                      return Bad("true or false", text);
                    }
                    return absl::OkStatus();
                  },
                  .format = [field] { return *field ? "true" : "false"; }});
}

Option& OptionTable::Add(std::string key, int* field, std::string help) {
  return Declare(std::move(key), std::move(help), IntAccess(field));
}
Option& OptionTable::Add(std::string key, int64_t* field, std::string help) {
  return Declare(std::move(key), std::move(help), IntAccess(field));
}
Option& OptionTable::Add(std::string key, uint32_t* field, std::string help) {
  return Declare(std::move(key), std::move(help), IntAccess(field));
}
Option& OptionTable::Add(std::string key, uint64_t* field, std::string help) {
  return Declare(std::move(key), std::move(help), IntAccess(field));
}

Option& OptionTable::Add(std::string key, double* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "NUMBER",
                  .set = [field](absl::string_view text) -> absl::Status {
                    if (!absl::SimpleAtod(text, field)) return Bad("a number", text);
                    return absl::OkStatus();
                  },
                  .format = [field] { return FormatNumber(*field); },
                  .number = [field] { return *field; }});
}

Option& OptionTable::Add(std::string key, absl::Duration* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "MS",
                  .set = [field](absl::string_view text) -> absl::Status {
                    int64_t ms = 0;
                    if (!absl::SimpleAtoi(text, &ms)) return Bad("milliseconds", text);
                    *field = absl::Milliseconds(ms);
                    return absl::OkStatus();
                  },
                  .format = [field] { return absl::StrCat(absl::ToInt64Milliseconds(*field)); },
                  .number = [field] { return absl::ToDoubleMilliseconds(*field); }});
}

Option& OptionTable::Add(std::string key, std::vector<std::string>* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "TEXT",
                  .is_list = true,
                  .set =
                      [field](absl::string_view text) {
                        field->emplace_back(text);
                        return absl::OkStatus();
                      },
                  .clear = [field] { field->clear(); },
                  .format = [field] { return ShowText(absl::StrJoin(*field, ",")); },
                  .strings = [field] { return *field; }});
}

Option& OptionTable::AddBytes(std::string key, int64_t* field, std::string help) {
  return Declare(std::move(key), std::move(help), BytesAccess(field));
}
Option& OptionTable::AddBytes(std::string key, uint64_t* field, std::string help) {
  return Declare(std::move(key), std::move(help), BytesAccess(field));
}

Option& OptionTable::AddBytes(std::string key, std::string* field, std::string help) {
  return Declare(std::move(key), std::move(help),
                 {.type_name = "BYTES",
                  .set = [field](absl::string_view text) -> absl::Status {
                    KVTIER_RETURN_IF_ERROR(ParseBytes(text).status());
                    *field = std::string(text);
                    return absl::OkStatus();
                  },
                  .format = [field] { return *field; }});
}

std::vector<std::string> LogLevelNames() {
  return {"trace", "debug", "info", "warn", "error", "critical", "off"};
}

void DeclareTlsOptions(TlsOptions* o, OptionTable* t, TlsRole role) {
  const bool client = role != TlsRole::kServer;
  const bool mutual = role != TlsRole::kHttpServerAndClient;
  t->Add("tls.plaintext", &o->plaintext,
         "no TLS, no service token: unauthenticated endpoints (local development only)")
      .Flag("--plaintext");
  t->Add("tls.ca_file", &o->ca_file,
         client ? "PEM CA certificates that verify the servers called (and clients, with mutual)"
                : "PEM CA certificates that verify clients (mutual TLS)");
  t->Add("tls.cert_file", &o->cert_file, "PEM certificate chain this server presents");
  t->Add("tls.key_file", &o->key_file, "PEM private key of tls.cert_file");
  if (mutual) {
    t->Add("tls.mutual", &o->mutual, "require client certificates signed by tls.ca_file");
  }
  if (client) {
    t->Add("tls.client_cert_file", &o->client_cert_file,
           "PEM certificate presented to the servers called (mutual TLS)");
    t->Add("tls.client_key_file", &o->client_key_file, "PEM private key of tls.client_cert_file");
  }
  t->Add("service_token_file", &o->service_token_file,
         "file with the service token sent and required on internal gRPC calls");
  t->Finalize([o, client]() -> absl::Status {
    const std::vector<std::pair<const char*, const std::string*>> files = {
        {"tls.ca_file", &o->ca_file},
        {"tls.cert_file", &o->cert_file},
        {"tls.key_file", &o->key_file},
        {"tls.client_cert_file", &o->client_cert_file},
        {"tls.client_key_file", &o->client_key_file},
        {"service_token_file", &o->service_token_file}};
    if (o->plaintext) {
      for (const auto& [key, value] : files) {
        if (!value->empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("tls.plaintext (--plaintext) excludes ", key,
                           " (TLS and the service "
                           "token are off in plain text): give one or the other"));
        }
      }
      if (o->mutual) {
        return absl::InvalidArgumentError("tls.plaintext (--plaintext) excludes tls.mutual");
      }
      return absl::OkStatus();
    }
    if (o->cert_file.empty() || o->key_file.empty() || o->service_token_file.empty()) {
      return absl::InvalidArgumentError(
          "TLS needs tls.cert_file (--tls-cert-file), tls.key_file (--tls-key-file) and "
          "service_token_file (--service-token-file); for an unauthenticated plain-text "
          "endpoint (local development only) give --plaintext (tls.plaintext: true) "
          "(docs/security.md)");
    }
    if ((client || o->mutual) && o->ca_file.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS needs tls.ca_file (--tls-ca-file) to verify ",
                       client ? "the servers this process calls" : "client certificates"));
    }
    if (o->client_cert_file.empty() != o->client_key_file.empty()) {
      return absl::InvalidArgumentError("tls.client_cert_file and tls.client_key_file go together");
    }
    return absl::OkStatus();
  });
}

std::vector<std::string> TlsFlags(const TlsOptions& t, TlsRole role) {
  if (t.plaintext) return {"--plaintext"};
  std::vector<std::pair<const char*, const std::string*>> files = {
      {"--tls-ca-file=", &t.ca_file},
      {"--tls-cert-file=", &t.cert_file},
      {"--tls-key-file=", &t.key_file},
      {"--service-token-file=", &t.service_token_file}};
  if (role != TlsRole::kServer) {
    files.push_back({"--tls-client-cert-file=", &t.client_cert_file});
    files.push_back({"--tls-client-key-file=", &t.client_key_file});
  }
  std::vector<std::string> flags;
  for (const auto& [flag, value] : files) {
    if (!value->empty()) flags.push_back(flag + *value);
  }
  if (t.mutual && role != TlsRole::kHttpServerAndClient) flags.push_back("--tls-mutual=true");
  return flags;
}

void OptionTable::Finalize(std::function<absl::Status()> finalize) {
  finalizers_.push_back(std::move(finalize));
}

// ---------------------------------------------------------------------------------------------
// OptionTable: YAML, flags, validation

Option* OptionTable::Find(absl::string_view key) {
  for (const auto& o : options_) {
    if (o->key() == key) return o.get();
  }
  return nullptr;
}

bool OptionTable::HasSection(absl::string_view prefix) const {
  for (const auto& o : options_) {
    if (absl::StartsWith(o->key(), prefix)) return true;
  }
  return false;
}

absl::Status OptionTable::LoadMap(const YAML::Node& map, const std::string& prefix) {
  for (const auto& kv : map) {
    const std::string key = prefix + kv.first.Scalar();
    if (Option* o = Find(key); o != nullptr) {
      absl::Status s = o->SetYaml(kv.second);
      if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(key, ": ", s.message()));
    } else if (kv.second.IsMap() && HasSection(key + ".")) {
      KVTIER_RETURN_IF_ERROR(LoadMap(kv.second, key + "."));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown key '", key, "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status OptionTable::LoadYamlFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("cannot read config ", path));
  }
  absl::Status s;
  try {
    const YAML::Node root = YAML::LoadFile(path);
    if (root.IsNull()) return absl::OkStatus();  // an empty file
    s = root.IsMap() ? LoadMap(root, "") : absl::InvalidArgumentError("not a YAML map");
  } catch (const YAML::Exception& e) {
    s = absl::InvalidArgumentError(e.what());
  }
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("config ", path, ": ", s.message()));
}

namespace {
const std::string kTrue = "true";
bool IsBool(const Option& o) { return o.type_name() == "BOOL"; }
}  // namespace

void OptionTable::AddFlags(CLI::App& app, const std::vector<std::string>& keys) {
  app.add_option("--config", config_path_, "YAML config file (flags override it)")
      ->type_name("FILE");
  for (const auto& o : options_) {
    if (!keys.empty() && std::find(keys.begin(), keys.end(), o->key()) == keys.end()) continue;
    const std::string help =
        absl::StrCat(o->help_, " (", o->key(), "; default ",
                     o->required_ && o->default_empty_ ? "none, required" : o->default_text_, ")");
    o->cli_ = o->access_.is_list ? app.add_option(o->flag_, o->flag_list_, help)
                                 : app.add_option(o->flag_, o->flag_text_, help);
    o->cli_->type_name(o->access_.type_name);
    // A bool flag alone ("--plaintext") means true.
    if (IsBool(*o)) o->cli_->expected(0, 1);
  }
}

absl::Status OptionTable::Validate() {
  for (const auto& o : options_) KVTIER_RETURN_IF_ERROR(o->Check());
  for (const auto& f : finalizers_) KVTIER_RETURN_IF_ERROR(f());
  return absl::OkStatus();
}

absl::Status OptionTable::Resolve() {
  if (!config_path_.empty()) KVTIER_RETURN_IF_ERROR(LoadYamlFile(config_path_));
  for (const auto& o : options_) {
    if (o->cli_ == nullptr || o->cli_->count() == 0) continue;
    const std::string& text = o->flag_text_.empty() && IsBool(*o) ? kTrue : o->flag_text_;
    absl::Status s = o->access_.is_list ? o->SetList(o->flag_list_) : o->SetText(text);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(o->flag(), ": ", s.message()));
  }
  return Validate();
}

absl::Status OptionTable::ParseAndResolve(const std::vector<std::string>& args) {
  CLI::App app;
  AddFlags(app);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11's order
  absl::Status s;
  try {
    app.parse(reversed);
    s = Resolve();
  } catch (const CLI::ParseError& e) {
    s = absl::InvalidArgumentError(e.what());
  }
  for (const auto& o : options_) o->cli_ = nullptr;  // they belong to `app`
  return s;
}

}  // namespace kvtier
