// kvtier: the operator's command-line tool.
//
// The store commands reach the store with the credentials of the local cluster of --run-dir
// (default .kvtier-run: its CA, client certificate and service token), or in plain text with
// --plaintext; `kvtier chat` takes the router's CA and API key from there too (docs/security.md).
//
//   kvtier store info   --store HOST:PORT             data-plane details of each node
//   kvtier store stats  --store HOST:PORT             counters and usage
//   kvtier store lookup --store HOST:PORT --namespace HEX (--tokens 1,2,... | KEYHEX...)
//   kvtier store drop-namespace --store HOST:PORT --namespace HEX
//   kvtier store demo   --store HOST:PORT             a multi-turn conversation's blocks
//   kvtier up   [--config FILE]                       start a local cluster (deploy/cluster.h)
//   kvtier down [--config FILE]                       stop it
//   kvtier chat --url URL [--script FILE | --turns N]  a streamed multi-turn chat (deploy/chat.h)
//   kvtier status [--config FILE] [--watch [S]]       one screen about the cluster
//   (deploy/status.h)
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <random>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/checksum.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/parse_bytes.h"
#include "common/process.h"
#include "common/status_macros.h"
#include "common/synthetic_block.h"
#include "common/tls.h"
#include "deploy/chat.h"
#include "deploy/cluster.h"
#include "deploy/status.h"
#include "kvtier/block_key.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kvtier: %s\n", s.ToString().c_str());
  return 1;
}

// How the store commands reach the store: set from --run-dir and --plaintext by main().
TlsOptions g_tls;

absl::StatusOr<std::unique_ptr<v1::CacheStore::Stub>> Stub(const std::string& addr) {
  KVTIER_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds,
                          MakeChannelCredentials(g_tls));
  return v1::CacheStore::NewStub(grpc::CreateChannel(addr, creds));
}

absl::StatusOr<std::unique_ptr<StoreClient>> Client(const std::string& addr) {
  StoreClientOptions o;
  o.stores = {addr};
  o.tls = g_tls;
  return StoreClient::Create(o);
}

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return ctx;
}

// The namespace the demo and the tools use when none is given: a zero model fingerprint.
NamespaceId DemoNamespace() {
  NamespaceParams p;
  p.tenant_salt = "kvtier-demo";
  return ComputeNamespace(p);
}

int Stats(const std::string& addr) {
  v1::StatsResponse r;
  auto stub = Stub(addr);
  if (!stub.ok()) return Fail(stub.status());
  absl::Status s = FromGrpc((*stub)->Stats(Ctx().get(), v1::StatsRequest(), &r));
  if (!s.ok()) return Fail(s);
  const auto* d = r.GetDescriptor();
  const auto* refl = r.GetReflection();
  std::printf("store %s\n", addr.c_str());
  for (int i = 0; i < d->field_count(); ++i) {
    std::printf("  %-22s %llu\n", d->field(i)->name().c_str(),
                static_cast<unsigned long long>(refl->GetUInt64(r, d->field(i))));
  }
  return 0;
}

int Info(const std::string& addr) {
  auto c = Client(addr);
  if (!c.ok()) return Fail(c.status());
  for (const StoreNodeInfo& n : (*c)->Nodes()) {
    if (!n.connected) return Fail(absl::UnavailableError("cannot reach store " + n.address));
    std::printf("store %s\n  incarnation %016llx\n  slots %llu x %llu bytes\n", n.address.c_str(),
                static_cast<unsigned long long>(n.incarnation),
                static_cast<unsigned long long>(n.slot_count),
                static_cast<unsigned long long>(n.slot_bytes));
    std::printf("  pool mapped into this process: %s\n",
                n.pool_mapped ? "yes (direct copy)" : "no (UCX put/get)");
    std::printf("  UCX memory types [%s], CUDA memory %s, spill %s\n  lanes:\n%s",
                absl::StrJoin(n.ucx_memory_types, ",").c_str(),
                n.cuda_memory_supported ? "yes" : "no", n.spill_enabled ? "on" : "off",
                n.ucx_lanes.c_str());
  }
  return 0;
}

absl::StatusOr<NamespaceId> ParseNamespace(const std::string& hex) {
  if (hex.empty()) return DemoNamespace();
  return KeyFromHex(hex);
}

int Lookup(const std::string& addr, const std::string& ns_hex, const std::string& tokens,
           uint32_t block_tokens, const std::vector<std::string>& key_hex) {
  auto ns = ParseNamespace(ns_hex);
  if (!ns.ok()) return Fail(ns.status());
  std::vector<BlockKey> keys;
  if (!tokens.empty()) {
    std::vector<TokenId> ids;
    for (absl::string_view t : absl::StrSplit(tokens, ',', absl::SkipWhitespace())) {
      TokenId v = 0;
      if (!absl::SimpleAtoi(t, &v) || v < 0) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("bad token id '", t, "'")));
      }
      ids.push_back(v);
    }
    keys = ComputeBlockKeys(*ns, ids, block_tokens);
  }
  for (const std::string& h : key_hex) {
    auto k = KeyFromHex(h);
    if (!k.ok()) return Fail(k.status());
    keys.push_back(*k);
  }
  if (keys.empty()) return Fail(absl::InvalidArgumentError("no keys (give --tokens or keys)"));
  auto c = Client(addr);
  if (!c.ok()) return Fail(c.status());
  auto n = (*c)->Lookup(*ns, keys);
  if (!n.ok()) return Fail(n.status());
  for (size_t i = 0; i < keys.size(); ++i) {
    std::printf("%3zu %s %s\n", i, KeyToHex(keys[i]).c_str(), i < *n ? "present" : "missing");
  }
  std::printf("cached prefix: %zu of %zu blocks\n", *n, keys.size());
  return 0;
}

int DropNamespace(const std::string& addr, const std::string& ns_hex) {
  auto ns = KeyFromHex(ns_hex);
  if (!ns.ok()) return Fail(ns.status());
  v1::DropNamespaceRequest req;
  req.set_namespace_id(std::string(KeyBytes(*ns)));
  v1::DropNamespaceResponse r;
  auto stub = Stub(addr);
  if (!stub.ok()) return Fail(stub.status());
  absl::Status s = FromGrpc((*stub)->DropNamespace(Ctx().get(), req, &r));
  if (!s.ok()) return Fail(s);
  std::printf("dropped %llu blocks, kept %llu pinned\n",
              static_cast<unsigned long long>(r.dropped()),
              static_cast<unsigned long long>(r.pinned_kept()));
  return 0;
}

// Most bytes of blocks `store demo` holds at once.
constexpr uint64_t kDemoMaxBytes = 4ull << 30;

// A conversation: every turn appends the model's answer and the next question, fetches the
// cached prefix, "computes" the rest and stores it, as a prefill worker will.
int Demo(const std::string& addr, int turns, uint32_t block_tokens, size_t block_bytes,
         int tokens_per_turn) {
  // Bad arguments get a clear error before anything is allocated.
  if (turns < 1 || tokens_per_turn < 1 || block_tokens == 0) {
    return Fail(absl::InvalidArgumentError(
        "--turns, --tokens-per-turn and --block-tokens must be at least 1"));
  }
  auto c = Client(addr);
  if (!c.ok()) return Fail(c.status());
  for (const StoreNodeInfo& n : (*c)->Nodes()) {
    if (n.connected && (block_bytes == 0 || block_bytes > n.slot_bytes)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--block-bytes ", block_bytes, " is outside 1..", n.slot_bytes,
                       " (the slot size of store ", n.address, ")")));
    }
  }
  // The last turn holds every block in memory here.
  const uint64_t blocks = static_cast<uint64_t>(turns) * tokens_per_turn / block_tokens;
  if (block_bytes == 0 || blocks * block_bytes > kDemoMaxBytes) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("the demo would hold ", blocks, " blocks of ", block_bytes, " bytes; at most ",
                     kDemoMaxBytes, " bytes (fewer turns or tokens, or smaller blocks)")));
  }
  const NamespaceId ns = DemoNamespace();
  std::mt19937 rng(7);
  std::vector<TokenId> tokens;
  std::printf("namespace %s, %u tokens per block, %zu bytes per block\n", KeyToHex(ns).c_str(),
              block_tokens, block_bytes);
  std::printf("%-5s %-8s %-7s %-7s %-7s %-8s %-10s %-10s\n", "turn", "tokens", "blocks", "cached",
              "stored", "present", "get GB/s", "put GB/s");
  for (int turn = 1; turn <= turns; ++turn) {
    for (int i = 0; i < tokens_per_turn; ++i)
      tokens.push_back(static_cast<TokenId>(rng() % 128000));
    std::vector<BlockKey> keys = ComputeBlockKeys(ns, tokens, block_tokens);
    std::vector<std::vector<uint8_t>> blocks(keys.size(), std::vector<uint8_t>(block_bytes));
    std::vector<void*> dst(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) dst[i] = blocks[i].data();
    absl::Time t0 = absl::Now();
    auto hit = (*c)->Get(ns, keys, dst, block_bytes);
    double get_s = absl::ToDoubleSeconds(absl::Now() - t0);
    if (!hit.ok()) return Fail(hit.status());
    for (size_t i = 0; i < *hit; ++i) {
      if (!IsSyntheticBlock(keys[i], blocks[i].data(), block_bytes)) {
        return Fail(absl::DataLossError("fetched block " + std::to_string(i) + " is wrong"));
      }
    }
    std::vector<BlockKey> missing(keys.begin() + *hit, keys.end());
    std::vector<const void*> src;
    for (size_t i = *hit; i < keys.size(); ++i) {
      FillSyntheticBlock(keys[i], blocks[i].data(), block_bytes);
      src.push_back(blocks[i].data());
    }
    t0 = absl::Now();
    auto put = (*c)->Put(ns, missing, ChainParents(*hit > 0 ? keys[*hit - 1] : ns, missing), src,
                         block_bytes);
    double put_s = absl::ToDoubleSeconds(absl::Now() - t0);
    if (!put.ok()) return Fail(put.status());
    auto gbps = [&](size_t n, double s) {
      return n == 0 || s <= 0 ? 0.0 : n * block_bytes / s / 1e9;
    };
    std::printf("%-5d %-8zu %-7zu %-7zu %-7u %-8u %-10.2f %-10.2f\n", turn, tokens.size(),
                keys.size(), *hit, put->stored, put->present, gbps(*hit, get_s),
                gbps(put->stored, put_s));
  }
  return 0;
}

int Up(deploy::ClusterFlags& flags) {
  absl::StatusOr<deploy::ClusterConfig> config = flags.Resolve();
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<std::string> bin_dir = SelfExeDir();
  if (!bin_dir.ok()) return Fail(bin_dir.status());
  auto state = deploy::StartCluster(*config, *bin_dir, std::cerr);
  if (!state.ok()) return Fail(state.status());
  std::fprintf(stderr, "cluster up: %zu processes, logs and state in %s (stop: kvtier down)\n",
               state->processes.size(), state->run_dir.c_str());
  const deploy::ClusterCredentials creds = deploy::CredentialsOf(state->run_dir);
  absl::StatusOr<std::string> key = ReadSecretFile(creds.api_key_file);
  if (!key.ok()) return Fail(key.status());
  std::fprintf(stderr,
               "HTTPS with the CA %s; API key (also in %s, 0600): %s\n"
               "  kvtier chat --run-dir %s   or   curl --cacert %s -H 'Authorization: Bearer "
               "%s' %s/models\n",
               creds.pki.ca_file.c_str(), creds.api_key_file.c_str(), key->c_str(),
               state->run_dir.c_str(), creds.pki.ca_file.c_str(), key->c_str(),
               state->endpoint.c_str());
  std::printf("%s\n", state->endpoint.c_str());
  return 0;
}

int Down(deploy::ClusterFlags& flags) {
  absl::StatusOr<deploy::ClusterConfig> config = flags.Resolve();
  if (!config.ok()) return Fail(config.status());
  absl::Status s =
      deploy::StopCluster(config->run_dir, absl::Seconds(config->stop_grace_s), std::cerr);
  if (!s.ok()) return Fail(s);
  std::fprintf(stderr, "cluster stopped\n");
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  kvtier::LogToStderr();
  CLI::App app{"kvtier: operate a kvtier cluster"};
  app.require_subcommand(1);
  CLI::App* store = app.add_subcommand("store", "talk to a kvtier-store");
  store->require_subcommand(1);
  std::string addr = "127.0.0.1:50051", ns_hex, tokens, bytes_text = "2MiB";
  uint32_t block_tokens = 16;
  int turns = 4, tokens_per_turn = 100;
  std::vector<std::string> keys;
  std::string run_dir = ".kvtier-run";
  bool plaintext = false;
  auto add_store = [&](CLI::App* sub) {
    sub->add_option("--store", addr, "store host:port");
    sub->add_option("--run-dir", run_dir, "the `kvtier up` run directory whose credentials to use")
        ->capture_default_str();
    sub->add_flag("--plaintext", plaintext, "plain text, no token (a store started --plaintext)");
  };
  CLI::App* info = store->add_subcommand("info", "data-plane details");
  add_store(info);
  CLI::App* stats = store->add_subcommand("stats", "counters and usage");
  add_store(stats);
  CLI::App* lookup = store->add_subcommand("lookup", "longest cached prefix of keys");
  add_store(lookup);
  lookup->add_option("--namespace", ns_hex, "namespace id (hex); default: the demo's");
  lookup->add_option("--tokens", tokens, "comma-separated token ids to compute keys from");
  lookup->add_option("--block-tokens", block_tokens, "tokens per block");
  lookup->add_option("keys", keys, "block keys (hex)");
  CLI::App* drop = store->add_subcommand("drop-namespace", "remove a namespace's blocks");
  add_store(drop);
  drop->add_option("--namespace", ns_hex, "namespace id (hex)")->required();
  CLI::App* demo = store->add_subcommand("demo", "store and fetch a multi-turn conversation");
  add_store(demo);
  demo->add_option("--turns", turns, "turns");
  demo->add_option("--tokens-per-turn", tokens_per_turn, "tokens each turn adds");
  demo->add_option("--block-tokens", block_tokens, "tokens per block");
  demo->add_option("--block-bytes", bytes_text, "bytes per block");
  // The cluster config (deploy/local/cluster.yaml), every field of it a flag of `up` too.
  kvtier::deploy::ClusterFlags up_flags, down_flags;
  CLI::App* up = app.add_subcommand("up", "start a local cluster in the background");
  up_flags.Register(*up);
  CLI::App* down = app.add_subcommand("down", "stop the local cluster");
  down_flags.Register(*down, {"run_dir", "stop_grace_s"});
  kvtier::deploy::ClusterFlags status_flags;
  kvtier::deploy::StatusOptions status_options;
  CLI::App* status = app.add_subcommand("status", "one screen about the local cluster");
  status_flags.Register(*status, {"run_dir"});
  status->add_option("--watch", status_options.watch_s, "redraw every SECONDS until interrupted")
      ->expected(0, 1)
      ->default_str("2");
  status->add_option("--timeout", status_options.timeout_s, "bound on each scrape, seconds")
      ->check(CLI::Range(0.1, 60.0))
      ->capture_default_str();
  kvtier::deploy::ChatOptions chat_options;
  bool no_cache = false;
  CLI::App* chat = app.add_subcommand("chat", "a streamed multi-turn chat with a router");
  chat->add_option("--url", chat_options.url, "router URL, e.g. http://127.0.0.1:8080")->required();
  chat->add_option("--script", chat_options.script, "user messages, one per line");
  chat->add_option("--turns", chat_options.turns, "turns from a built-in list (no stdin)");
  chat->add_option("--max-tokens", chat_options.max_tokens, "max_tokens of each reply")
      ->capture_default_str();
  chat->add_option("--model", chat_options.model, "model id (default: the served one)");
  chat->add_option("--temperature", chat_options.temperature, "0 = greedy")->capture_default_str();
  chat->add_option("--system", chat_options.system, "system message ('' = none)");
  chat->add_flag("--no-cache", no_cache, "send \"cache\": false (recompute everything)");
  std::string api_key_file;
  chat->add_option("--run-dir", run_dir,
                   "a `kvtier up` run directory: the router's CA and API key when present")
      ->capture_default_str();
  chat->add_option("--ca-file", chat_options.ca_file, "PEM CA of an HTTPS router");
  chat->add_option("--api-key-file", api_key_file, "file holding the API key");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  if (*up) return kvtier::Up(up_flags);
  if (*down) return kvtier::Down(down_flags);
  if (*status) {
    absl::StatusOr<kvtier::deploy::ClusterConfig> config = status_flags.Resolve();
    if (!config.ok()) return kvtier::Fail(config.status());
    status_options.run_dir = config->run_dir;
    return kvtier::deploy::RunStatus(status_options, std::cout, std::cerr);
  }
  const kvtier::deploy::ClusterCredentials creds = kvtier::deploy::CredentialsOf(run_dir);
  if (*chat) {
    chat_options.cache = !no_cache;
    if (chat_options.ca_file.empty() && std::filesystem::exists(creds.pki.ca_file)) {
      chat_options.ca_file = creds.pki.ca_file;
    }
    if (api_key_file.empty() && std::filesystem::exists(creds.api_key_file)) {
      api_key_file = creds.api_key_file;
    }
    if (!api_key_file.empty()) {
      auto key = kvtier::ReadSecretFile(api_key_file);
      if (!key.ok()) return kvtier::Fail(key.status());
      chat_options.api_key = *key;
    }
    auto turns = kvtier::deploy::RunChat(chat_options, std::cin, std::cout);
    if (!turns.ok()) return kvtier::Fail(turns.status());
    return 0;
  }
  if (plaintext) {
    kvtier::g_tls.plaintext = true;
  } else {
    kvtier::g_tls = creds.pki.Options();
  }
  if (*info) return kvtier::Info(addr);
  if (*stats) return kvtier::Stats(addr);
  if (*lookup) return kvtier::Lookup(addr, ns_hex, tokens, block_tokens, keys);
  if (*drop) return kvtier::DropNamespace(addr, ns_hex);
  if (*demo) {
    auto bytes = kvtier::ParseBytes(bytes_text);
    if (!bytes.ok()) return kvtier::Fail(bytes.status());
    return kvtier::Demo(addr, turns, block_tokens, *bytes, tokens_per_turn);
  }
  return 0;
}
