// Option tables: the options of a service declared once per field (key, type, default, help,
// checks), and from that one declaration the YAML config (--config), the command-line flags
// (CLI11), the --help text and the validation. In the spirit of RocksDB's OptionTypeInfo: a table
// of field descriptors over a plain struct. docs/service-kit.md describes the design.
//
//   void DeclareFoo(FooOptions* o, OptionTable* t) {
//     t->Add("listen", &o->listen, "gRPC host:port (port 0: any free port)").HostPort();
//     t->Add("stores", &o->stores, "store node host:port (repeat)").Flag("--store").HostPort();
//     t->AddBytes("kv_cache_bytes", &o->kv_cache_bytes, "paged KV cache").Positive();
//     t->Finalize([o] { return o->a < o->b ? absl::OkStatus() : ...; });
//   }
//
// Precedence: the field's value when it is declared (its default) < the YAML file < the flags
// given on the command line. YAML keys may be nested ("store.pool_bytes" is `pool_bytes:` inside
// `store:`); an unknown key is an error naming it. The flag is "--" + the key with '_' and '.'
// turned into '-' unless Flag() names another.
//
// Ownership: a table holds pointers to the fields it was declared over (the caller keeps that
// object alive and in place) and owns the text CLI11 parses the flags into, so it can be
// neither copied nor moved and must outlive the CLI::App it registered flags with.
// Thread-compatible: one thread at a time.
#ifndef KVTIER_COMMON_OPTIONS_H_
#define KVTIER_COMMON_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kvtier/tls_options.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace YAML {
class Node;
}

namespace kvtier {

// One field of a table. The setters return *this so that checks chain after Add().
class Option {
 public:
  // How a field of one C++ type is read, written and checked: what OptionTable's
  // Add*() fill in; not for other callers.
  struct Access {
    std::string type_name;  // for --help: INT, BYTES, ...
    bool is_list = false;
    // Scalars: parse `text` into the field. Lists: append `text`.
    std::function<absl::Status(absl::string_view text)> set;
    std::function<void()> clear;                        // lists: empty the list
    std::function<std::string()> format;                // the value as --help shows it
    std::function<double()> number;                     // numbers: the value; null otherwise
    std::function<std::vector<std::string>()> strings;  // strings, lists: the values
  };

  // The command-line flag ("--store"), when it is not derived from the key.
  Option& Flag(std::string flag);
  // Strings: the value must be one of `values`.
  Option& OneOf(std::vector<std::string> values);
  // Numbers: the value must be in [min, max], >= min, or > 0.
  Option& Range(double min, double max);
  Option& Min(double min);
  Option& Positive();
  // Strings and lists: every value must be host:port (common/host_port.h). With `off_allowed`,
  // "" or "off" turns the endpoint off (stored as "").
  Option& HostPort(bool off_allowed = false);
  // Strings and lists: must not be empty.
  Option& Required();
  // Strings: a directory that holds `file` (checked when not empty).
  Option& DirWith(std::string file);

  const std::string& key() const { return key_; }
  const std::string& flag() const { return flag_; }
  const std::string& type_name() const { return access_.type_name; }

 private:
  friend class OptionTable;

  Option(std::string key, std::string help, Access access);
  // "key (--flag)", for messages.
  std::string Name() const;
  // Sets the field from text (a flag's, or a YAML scalar's); InvalidArgument without a name.
  absl::Status SetText(absl::string_view text);
  absl::Status SetList(const std::vector<std::string>& values);
  absl::Status SetYaml(const YAML::Node& node);
  // The field's own checks; InvalidArgument naming the key and the flag.
  absl::Status Check() const;

  std::string key_;
  std::string flag_;
  std::string help_;
  Access access_;
  std::string default_text_;    // format() at declaration
  bool default_empty_ = false;  // strings and lists: nothing at declaration
  std::vector<std::string> one_of_;
  std::optional<double> min_, max_;
  bool positive_ = false;
  bool host_port_ = false;
  bool off_allowed_ = false;
  bool required_ = false;
  std::string dir_with_;
  // Command-line text, kept until OptionTable::Resolve applies it.
  std::string flag_text_;
  std::vector<std::string> flag_list_;
  CLI::Option* cli_ = nullptr;
};

class OptionTable {
 public:
  OptionTable() = default;
  OptionTable(const OptionTable&) = delete;
  OptionTable& operator=(const OptionTable&) = delete;

  // Declares a field; its current value is its default. Durations are whole milliseconds.
  Option& Add(std::string key, std::string* field, std::string help);
  Option& Add(std::string key, bool* field, std::string help);
  Option& Add(std::string key, int* field, std::string help);
  Option& Add(std::string key, int64_t* field, std::string help);
  Option& Add(std::string key, uint32_t* field, std::string help);
  Option& Add(std::string key, uint64_t* field, std::string help);
  Option& Add(std::string key, double* field, std::string help);
  Option& Add(std::string key, absl::Duration* field, std::string help);
  // A list: a YAML sequence (or one scalar), a repeatable flag. Flags replace the YAML list.
  Option& Add(std::string key, std::vector<std::string>* field, std::string help);
  // Byte sizes with units ("256MiB", common/parse_bytes.h). A string field keeps the text.
  Option& AddBytes(std::string key, int64_t* field, std::string help);
  Option& AddBytes(std::string key, uint64_t* field, std::string help);
  Option& AddBytes(std::string key, std::string* field, std::string help);

  // A check over several fields, or a value derived from others, run by Validate() in
  // declaration order after every field passed its own checks.
  void Finalize(std::function<absl::Status()> finalize);

  // Sets the fields a YAML file names. NotFound when there is no such file; InvalidArgument
  // ("config PATH: KEY: why") for an unknown key, a bad value or a file that is no YAML map.
  absl::Status LoadYamlFile(const std::string& path);

  // Adds --config FILE and one flag per field (only the fields named in `keys` unless empty) to
  // `app`, each flag's help ending with its key and default.
  void AddFlags(CLI::App& app, const std::vector<std::string>& keys = {});

  // Runs each field's checks, then the Finalize() functions; the first error.
  absl::Status Validate();

  // After `app` parsed the command line: loads --config if given, sets the fields of the flags
  // given, validates. InvalidArgument naming the key or flag.
  absl::Status Resolve();

  // AddFlags to an app of its own, parse `args` (no program name) and Resolve; a command-line
  // error (--help included) is InvalidArgument. For tests and tools.
  absl::Status ParseAndResolve(const std::vector<std::string>& args);

 private:
  Option& Declare(std::string key, std::string help, Option::Access access);
  Option* Find(absl::string_view key);
  bool HasSection(absl::string_view prefix) const;
  absl::Status LoadMap(const YAML::Node& map, const std::string& prefix);

  std::vector<std::unique_ptr<Option>> options_;
  std::vector<std::function<absl::Status()>> finalizers_;
  std::string config_path_;
};

// The names a log_level option accepts (SetLogLevel of common/logging.h takes each): trace,
// debug, info, warn, error, critical, off.
std::vector<std::string> LogLevelNames();

// Which fields of TlsOptions a process declares (docs/security.md): a gRPC server only (the
// store), a gRPC server that also calls other kvtier servers (the workers call their stores:
// `mutual` and the client certificate too), or an HTTP server that calls gRPC servers (the
// router: no `mutual`, its public API authenticates callers by API key).
enum class TlsRole { kServer, kServerAndClient, kHttpServerAndClient };

// Declares `tls` into `table`: tls.plaintext (--plaintext), tls.ca_file, tls.cert_file,
// tls.key_file, tls.mutual, tls.client_cert_file, tls.client_key_file (the flags --tls-...)
// and service_token_file, as `role` uses them. Validation: without tls.plaintext the server
// certificate, its key and the service token are required (a process with neither refuses to
// start), and so is tls.ca_file where a peer's certificate is checked; tls.plaintext with any
// of them is an error.
void DeclareTlsOptions(TlsOptions* tls, OptionTable* table, TlsRole role);

// The command-line flags that give a process of `role` the fields of `tls` it declares (for
// launchers and tests starting kvtier servers): {"--plaintext"}, or the --tls-... flags of
// the files set and --service-token-file.
std::vector<std::string> TlsFlags(const TlsOptions& tls, TlsRole role);

// How a service declares the fields of its options struct T into a table.
template <typename T>
using DeclareOptions = void (*)(T* options, OptionTable* table);

// The command line of a service: --config and one flag per field of T over `defaults`.
// Register() adds the flags to a CLI::App; after it parsed, Resolve() gives the options
// (defaults < YAML < flags given), validated.
template <typename T>
class OptionFlags {
 public:
  OptionFlags(T defaults, DeclareOptions<T> declare) : options_(std::move(defaults)) {
    declare(&options_, &table_);
  }
  void Register(CLI::App& app, const std::vector<std::string>& keys = {}) {
    table_.AddFlags(app, keys);
  }
  absl::StatusOr<T> Resolve() {
    if (absl::Status s = table_.Resolve(); !s.ok()) return s;
    return options_;
  }
  // The options of the command line `args` (no program name) instead of Register, parse and
  // Resolve: OptionTable::ParseAndResolve.
  absl::StatusOr<T> Parse(const std::vector<std::string>& args) {
    if (absl::Status s = table_.ParseAndResolve(args); !s.ok()) return s;
    return options_;
  }

 private:
  T options_;  // declared before table_, which points into it
  OptionTable table_;
};

// `base` with the fields the YAML file at `path` sets (not validated).
template <typename T>
absl::StatusOr<T> LoadYamlOptions(const std::string& path, T base, DeclareOptions<T> declare) {
  OptionTable table;
  declare(&base, &table);
  if (absl::Status s = table.LoadYamlFile(path); !s.ok()) return s;
  return base;
}

// Validates `options` (and fills the values Finalize() functions derive).
template <typename T>
absl::Status ValidateOptions(T* options, DeclareOptions<T> declare) {
  OptionTable table;
  declare(options, &table);
  return table.Validate();
}

}  // namespace kvtier

#endif  // KVTIER_COMMON_OPTIONS_H_
