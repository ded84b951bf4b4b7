// Authentication end to end (docs/security.md): real kvtier-store, kvtier-prefill,
// kvtier-decode and kvtier-router processes on loopback serving TLS (mutual between the
// services) with a service token, and the router's HTTPS API with API keys of two tenants.
// Every endpoint must reject a call without the token (gRPC) or the key (HTTP), a plain-text
// client and, under mutual TLS, a client without a certificate; two tenants must share no
// cached block while their texts stay equal.
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "common/options.h"
#include "common/process.h"
#include "common/tls.h"
#include "engine/model_config.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/tokenizer_writer.h"
#include "gtest/gtest.h"
#include "kvtier/store_client.h"
#include "kvtier/v1/cachestore.grpc.pb.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "text/chat_template.h"

namespace kvtier {
namespace {

using nlohmann::json;

constexpr char kModel[] = "tiny-chat";
constexpr char kKeyA[] = "sk-tenant-a-0123456789abcdef";
constexpr char kKeyA2[] = "sk-tenant-a-second-key-0000";
constexpr char kKeyB[] = "sk-tenant-b-0123456789abcdef";

class AuthIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A server that refuses a client (no TLS, no key) may close while the client still writes.
    signal(SIGPIPE, SIG_IGN);
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = testing::MakeTempDir("auth_" + name);
    std::filesystem::create_directories(dir_ + "/tls");
    auto pki = WriteLocalPki(dir_ + "/tls");
    ASSERT_TRUE(pki.ok()) << pki.status();
    tls_ = pki->Options();  // mutual TLS between the services
    api_keys_ = dir_ + "/api_keys";
    std::ofstream(api_keys_) << kKeyA << " alpha\n" << kKeyA2 << " alpha\n" << kKeyB << " beta\n";
  }

  void TearDown() override {
    router_.reset();
    decode_.reset();
    prefill_.reset();
    store_.reset();
    testing::RemoveDirOrPrintLogs(dir_, HasFailure(),
                                  {"store.log", "prefill.log", "decode.log", "router.log"});
  }

  void StartStore() {
    StoreProcessOptions so;
    so.pool_bytes = "16MiB";
    so.slot_bytes = "64KiB";
    so.security_args = TlsFlags(tls_, TlsRole::kServer);
    auto s = StoreProcess::Start(dir_, so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::make_unique<StoreProcess>(std::move(*s));
  }

  void StartAll() {
    model_dir_ = dir_ + "/model";
    const engine::ModelConfig config = *engine::PresetConfig("tiny");
    ASSERT_TRUE(testing::WriteRandomModel(config, 11, engine::DType::kF32, model_dir_).ok());
    ASSERT_TRUE(testing::WriteTokenizer(config, text::ChatFormat::kLlama3, model_dir_).ok());
    ASSERT_NO_FATAL_FAILURE(StartStore());
    std::vector<std::string> worker = {"--model-dir=" + model_dir_,
                                       "--listen=127.0.0.1:0",
                                       "--threads=1",
                                       "--kv-cache-bytes=16MiB",
                                       "--max-batch-tokens=64",
                                       "--max-batch-seqs=8",
                                       "--model-name=" + std::string(kModel),
                                       "--store=" + store_->address()};
    for (std::string& f : TlsFlags(tls_, TlsRole::kServerAndClient)) worker.push_back(f);
    auto p = ServerProcess::Start("kvtier-prefill", worker, dir_, "prefill");
    ASSERT_TRUE(p.ok()) << p.status();
    prefill_ = std::make_unique<ServerProcess>(std::move(*p));
    auto d = ServerProcess::Start("kvtier-decode", worker, dir_, "decode");
    ASSERT_TRUE(d.ok()) << d.status();
    decode_ = std::make_unique<ServerProcess>(std::move(*d));
    std::vector<std::string> router = {
        "--model-dir=" + model_dir_,      "--model-name=" + std::string(kModel),
        "--listen=127.0.0.1:0",           "--prefill=" + prefill_->address(),
        "--decode=" + decode_->address(), "--skip-prefill-below=16",
        "--api-keys-file=" + api_keys_};
    for (std::string& f : TlsFlags(tls_, TlsRole::kHttpServerAndClient)) router.push_back(f);
    auto r = ServerProcess::Start("kvtier-router", router, dir_, "router");
    ASSERT_TRUE(r.ok()) << r.status();
    router_ = std::make_unique<ServerProcess>(std::move(*r));
  }

  // Channel credentials: TLS with the CA, the client certificate and the token as `tls` says.
  static std::shared_ptr<grpc::ChannelCredentials> Creds(const TlsOptions& tls) {
    auto c = MakeChannelCredentials(tls);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : grpc::InsecureChannelCredentials();
  }
  // TLS with the client certificate but no token: the credentials as gRPC builds them.
  std::shared_ptr<grpc::ChannelCredentials> NoTokenCreds() const {
    auto read = [](const std::string& path) {
      std::ifstream f(path);
      return std::string(std::istreambuf_iterator<char>(f), {});
    };
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read(tls_.ca_file);
    o.pem_cert_chain = read(tls_.client_cert_file);
    o.pem_private_key = read(tls_.client_key_file);
    return grpc::SslCredentials(o);
  }
  TlsOptions WrongToken() const {
    TlsOptions t = tls_;
    t.service_token_file = dir_ + "/wrong_token";
    std::ofstream(t.service_token_file) << "not-the-token\n";
    return t;
  }
  TlsOptions NoClientCertificate() const {
    TlsOptions t = tls_;
    t.client_cert_file.clear();
    t.client_key_file.clear();
    return t;
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return ctx;
  }
  static grpc::StatusCode StoreInfo(const std::string& address,
                                    const std::shared_ptr<grpc::ChannelCredentials>& creds) {
    v1::GetInfoResponse r;
    return v1::CacheStore::NewStub(grpc::CreateChannel(address, creds))
        ->GetInfo(Ctx().get(), v1::GetInfoRequest(), &r)
        .error_code();
  }
  // GetWorkerInfo of a prefill or decode worker (`Service`).
  template <typename Service>
  static grpc::StatusCode WorkerInfo(const std::string& address,
                                     const std::shared_ptr<grpc::ChannelCredentials>& creds) {
    v1::WorkerInfo r;
    return Service::NewStub(grpc::CreateChannel(address, creds))
        ->GetWorkerInfo(Ctx().get(), v1::WorkerInfoRequest(), &r)
        .error_code();
  }

  // An HTTPS client of the router trusting the CA, sending `key` (none when empty).
  std::unique_ptr<httplib::SSLClient> Https(const std::string& key) const {
    auto cli = std::make_unique<httplib::SSLClient>("127.0.0.1", router_->grpc_port());
    cli->set_ca_cert_path(tls_.ca_file.c_str());
    cli->enable_server_certificate_verification(true);
    if (!key.empty()) cli->set_bearer_token_auth(key.c_str());
    cli->set_read_timeout(60, 0);
    return cli;
  }

  struct Answer {
    int status = 0;
    std::string text;
    int64_t cached_tokens = -1;
  };
  Answer Chat(const std::string& key, const std::string& question, bool cache = true) {
    json req = {{"model", kModel},
                {"messages",
                 {{{"role", "system"},
                   {"content",
                    "You are the assistant of tenant tests. This system prompt is long enough to "
                    "fill several blocks of sixteen tokens each, so that a cached prefix shows."}},
                  {{"role", "user"}, {"content", question}}}},
                {"max_tokens", 8},
                {"temperature", 0},
                {"cache", cache}};
    Answer a;
    httplib::Result r = Https(key)->Post("/v1/chat/completions", req.dump(), "application/json");
    if (!r) {
      ADD_FAILURE() << "no response: " << httplib::to_string(r.error());
      return a;
    }
    a.status = r->status;
    json body = json::parse(r->body, nullptr, false);
    if (r->status != 200 || body.is_discarded()) return a;
    a.text = body["choices"][0]["message"]["content"].get<std::string>();
    a.cached_tokens = body["usage"]["prompt_tokens_details"]["cached_tokens"].get<int64_t>();
    return a;
  }

  std::string dir_, model_dir_, api_keys_;
  TlsOptions tls_;
  std::unique_ptr<StoreProcess> store_;
  std::unique_ptr<ServerProcess> prefill_, decode_, router_;
};

TEST_F(AuthIntegrationTest, StoreTakesOnlyTokenAndCertificate) {
  ASSERT_NO_FATAL_FAILURE(StartStore());
  const std::string addr = store_->address();
  EXPECT_EQ(StoreInfo(addr, Creds(tls_)), grpc::StatusCode::OK);
  EXPECT_EQ(StoreInfo(addr, NoTokenCreds()), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(StoreInfo(addr, Creds(WrongToken())), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(StoreInfo(addr, grpc::InsecureChannelCredentials()), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(StoreInfo(addr, Creds(NoClientCertificate())), grpc::StatusCode::UNAVAILABLE);
  // An admin call is refused as well, and does nothing.
  v1::DropNamespaceRequest drop;
  drop.set_namespace_id(std::string(32, '\0'));
  v1::DropNamespaceResponse dropped;
  EXPECT_EQ(v1::CacheStore::NewStub(grpc::CreateChannel(addr, NoTokenCreds()))
                ->DropNamespace(Ctx().get(), drop, &dropped)
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // The store client over TLS: control plane authenticated, blocks stored and read back.
  StoreClientOptions o;
  o.stores = {addr};
  o.tls = tls_;
  auto client = StoreClient::Create(o);
  ASSERT_TRUE(client.ok()) << client.status();
  const NamespaceId ns = ComputeNamespace(NamespaceParams{});
  const std::vector<TokenId> tokens(32, 5);
  const std::vector<BlockKey> keys = ComputeBlockKeys(ns, tokens, 16);
  std::vector<uint8_t> a(4096, 1), b(4096, 2);
  std::vector<const void*> src = {a.data(), b.data()};
  auto put = (*client)->Put(ns, keys, ChainParents(ns, keys), src, 4096);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored, 2u);
  auto hits = (*client)->Lookup(ns, keys);
  ASSERT_TRUE(hits.ok());
  EXPECT_EQ(*hits, 2u);
  // Without credentials the client is not even created: plain text must be asked for.
  o.tls = TlsOptions();
  EXPECT_EQ(StoreClient::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthIntegrationTest, ServerWithoutTlsOrPlaintextRefusesToStart) {
  SpawnOptions o;
  o.argv = {std::string(KVTIER_BIN_DIR) + "/kvtier-store", "--listen=127.0.0.1:0",
            "--metrics-listen=off", "--pool-bytes=4MiB", "--slot-bytes=64KiB"};
  o.stdout_path = dir_ + "/refused.log";
  o.stderr_path = "&1";
  auto child = ChildProcess::Spawn(o);
  ASSERT_TRUE(child.ok()) << child.status();
  std::optional<int> st = child->Wait(absl::Seconds(20));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << *st;
  EXPECT_NE(FileTail(o.stdout_path).find("--plaintext"), std::string::npos)
      << FileTail(o.stdout_path);
}

TEST_F(AuthIntegrationTest, EveryEndpointRejectsCallsWithoutCredentials) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  for (const auto& [name, info] :
       std::vector<std::pair<std::string, grpc::StatusCode (*)(
                                              const std::string&,
                                              const std::shared_ptr<grpc::ChannelCredentials>&)>>{
           {prefill_->address(), WorkerInfo<v1::PrefillWorker>},
           {decode_->address(), WorkerInfo<v1::DecodeWorker>}}) {
    EXPECT_EQ(info(name, Creds(tls_)), grpc::StatusCode::OK) << name;
    EXPECT_EQ(info(name, NoTokenCreds()), grpc::StatusCode::UNAUTHENTICATED) << name;
    EXPECT_EQ(info(name, Creds(WrongToken())), grpc::StatusCode::UNAUTHENTICATED) << name;
    EXPECT_EQ(info(name, grpc::InsecureChannelCredentials()), grpc::StatusCode::UNAVAILABLE)
        << name;
    EXPECT_EQ(info(name, Creds(NoClientCertificate())), grpc::StatusCode::UNAVAILABLE) << name;
  }

  // The router's API: /health is open; everything else takes a known API key only.
  httplib::Result health = Https("")->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  for (const std::string key : {"", "sk-unknown-key-0123456789"}) {
    httplib::Result r = Https(key)->Get("/v1/models");
    ASSERT_TRUE(r) << key;
    EXPECT_EQ(r->status, 401) << key;
    json e = json::parse(r->body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << r->body;
    EXPECT_EQ(e["error"]["code"], "invalid_api_key") << r->body;
    EXPECT_EQ(e["error"]["type"], "invalid_request_error") << r->body;
    EXPECT_EQ(Chat(key, "hello").status, 401) << key;
  }
  httplib::Result models = Https(kKeyA)->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200) << models->body;
  // Plain HTTP to the HTTPS port gets no answer.
  httplib::Client plain("127.0.0.1", router_->grpc_port());
  plain.set_read_timeout(5, 0);
  EXPECT_FALSE(plain.Get("/health"));
}

TEST_F(AuthIntegrationTest, TenantsShareNoCachedBlocks) {
  ASSERT_NO_FATAL_FAILURE(StartAll());
  const std::string q = "What does tenant alpha keep in the cache tier?";
  const Answer first = Chat(kKeyA, q);
  ASSERT_EQ(first.status, 200);
  EXPECT_EQ(first.cached_tokens, 0);
  const Answer again = Chat(kKeyA, q);  // the same tenant: a cache hit
  ASSERT_EQ(again.status, 200);
  EXPECT_GT(again.cached_tokens, 0);
  EXPECT_EQ(again.text, first.text);
  const Answer other_key = Chat(kKeyA2, q);  // another key of the same tenant shares its blocks
  EXPECT_GT(other_key.cached_tokens, 0);
  // Tenant beta sends alpha's prompt: nothing of alpha's is served to it, the text is the same.
  const Answer beta = Chat(kKeyB, q);
  ASSERT_EQ(beta.status, 200);
  EXPECT_EQ(beta.cached_tokens, 0);
  EXPECT_EQ(beta.text, first.text);
  const Answer beta_again = Chat(kKeyB, q);  // beta's own blocks are its cache
  EXPECT_GT(beta_again.cached_tokens, 0);
  EXPECT_EQ(beta_again.text, first.text);
  EXPECT_EQ(Chat(kKeyB, q, /*cache=*/false).text, first.text);
}

}  // namespace
}  // namespace kvtier
