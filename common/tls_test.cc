// The credential builders of common/tls.h over real files: a local PKI (WriteLocalPki), bad
// and missing files, and a real gRPC server and channel in this process (TLS, mutual TLS, the
// service token; plain text against TLS).
#include "common/tls.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/service.h"
#include "kvtier/v1/cachestore.grpc.pb.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

// A store service whose GetInfo answers: what a call that passed authentication reaches.
class InfoService : public v1::CacheStore::Service {
 public:
  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*,
                       v1::GetInfoResponse* r) override {
    r->set_slot_bytes(42);
    return grpc::Status::OK;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) / ("tls_test_" + std::to_string(getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto pki = WriteLocalPki(dir_);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = *pki;
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    fs::remove_all(dir_);
  }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }

  // Serves InfoService with `tls`; the address.
  std::string Serve(const TlsOptions& tls) {
    int port = 0;
    auto server = StartGrpcServer("test", "127.0.0.1:0", tls, {&service_}, &port);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return "";
    server_ = std::move(*server);
    return "127.0.0.1:" + std::to_string(port);
  }

  // GetInfo over a channel with `creds`: its status code.
  static grpc::StatusCode Call(const std::string& address,
                               const std::shared_ptr<grpc::ChannelCredentials>& creds) {
    auto stub = v1::CacheStore::NewStub(grpc::CreateChannel(address, creds));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetInfoResponse r;
    grpc::Status s = stub->GetInfo(&ctx, v1::GetInfoRequest(), &r);
    if (s.ok()) {
      EXPECT_EQ(r.slot_bytes(), 42u);
    }
    return s.error_code();
  }

  static std::shared_ptr<grpc::ChannelCredentials> Channel(const TlsOptions& tls) {
    auto c = MakeChannelCredentials(tls);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  std::string dir_;
  LocalPki pki_;
  InfoService service_;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(TlsTest, LocalPkiFilesAreWrittenOnceAndSecretsArePrivate) {
  for (const std::string* f : {&pki_.key_file, &pki_.client_key_file, &pki_.service_token_file}) {
    struct stat st;
    ASSERT_EQ(stat(f->c_str(), &st), 0) << *f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << *f;
  }
  auto token = ReadSecretFile(pki_.service_token_file);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->size(), 64u);
  auto again = WriteLocalPki(dir_);  // reused, not regenerated
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*ReadSecretFile(again->service_token_file), *token);
  // A server certificate that does not cover the addresses asked for is made anew, with them
  // (a `kvtier up` cluster in network namespaces); asked again, it is reused.
  auto read = [](const std::string& path) {
    std::stringstream ss;
    ss << std::ifstream(path).rdbuf();
    return ss.str();
  };
  const std::string local_cert = read(pki_.cert_file);
  auto hosts = WriteLocalPki(dir_, 825, {"10.213.0.1", "10.213.0.2"});
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  const std::string cert = read(hosts->cert_file);
  EXPECT_NE(cert, local_cert);
  EXPECT_NE(*ReadSecretFile(hosts->service_token_file), *token);
  ASSERT_TRUE(WriteLocalPki(dir_, 825, {"10.213.0.2"}).ok());
  EXPECT_EQ(read(hosts->cert_file), cert);
}

TEST_F(TlsTest, SecretEqualsComparesWholeStrings) {
  EXPECT_TRUE(SecretEquals("abc", "abc"));
  EXPECT_FALSE(SecretEquals("abc", "abd"));
  EXPECT_FALSE(SecretEquals("abc", "abcd"));
  EXPECT_FALSE(SecretEquals("", "a"));
}

TEST_F(TlsTest, BadFilesAreClearErrors) {
  auto message = [](const absl::Status& s) { return std::string(s.message()); };
  TlsOptions t = pki_.Options();
  t.cert_file = dir_ + "/missing.pem";
  absl::Status s = MakeServerCredentials(t, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(message(s).find("tls.cert_file " + t.cert_file), std::string::npos) << s;

  t = pki_.Options();
  t.cert_file = Write("garbage.pem", "not a certificate\n");
  s = MakeServerCredentials(t, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(s).find("not a PEM certificate"), std::string::npos) << s;

  t = pki_.Options();
  t.key_file = pki_.client_key_file;  // another certificate's key
  s = MakeHttpsContext(t, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(s).find("does not match"), std::string::npos) << s;

  t = pki_.Options();
  t.ca_file = Write("garbage-ca.pem", "nothing\n");
  s = MakeChannelCredentials(t).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(s).find("tls.ca_file"), std::string::npos) << s;

  t = pki_.Options();
  t.service_token_file = Write("empty_token", " \n");
  s = MakeChannelCredentials(t).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(message(s).find("is empty"), std::string::npos) << s;

  t = TlsOptions();  // neither TLS nor plain text
  EXPECT_FALSE(MakeServerCredentials(t, "x").ok());
  EXPECT_FALSE(MakeChannelCredentials(t).ok());
  EXPECT_FALSE(MakeHttpsContext(t, "x").ok());

  t.plaintext = true;
  EXPECT_TRUE(MakeServerCredentials(t, "x").ok());
  auto https = MakeHttpsContext(t, "x");
  ASSERT_TRUE(https.ok());
  EXPECT_EQ(*https, nullptr);
}

TEST_F(TlsTest, TlsServerTakesTheTokenAndRejectsEverythingElse) {
  TlsOptions server = pki_.Options();
  server.mutual = false;
  const std::string address = Serve(server);
  TlsOptions client = pki_.Options();
  client.client_cert_file.clear();
  client.client_key_file.clear();
  EXPECT_EQ(Call(address, Channel(client)), grpc::StatusCode::OK);

  TlsOptions wrong = client;
  wrong.service_token_file = Write("wrong_token", "0123\n");
  EXPECT_EQ(Call(address, Channel(wrong)), grpc::StatusCode::UNAUTHENTICATED);

  // TLS without the token: the processor sees no authorization header.
  grpc::SslCredentialsOptions ssl;
  std::ifstream ca(pki_.ca_file);
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(ca), {});
  EXPECT_EQ(Call(address, grpc::SslCredentials(ssl)), grpc::StatusCode::UNAUTHENTICATED);

  // A plain-text client cannot talk to a TLS server.
  EXPECT_EQ(Call(address, grpc::InsecureChannelCredentials()), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TlsTest, MutualTlsRejectsAClientWithoutACertificate) {
  const std::string address = Serve(pki_.Options());  // mutual
  EXPECT_EQ(Call(address, Channel(pki_.Options())), grpc::StatusCode::OK);
  TlsOptions no_cert = pki_.Options();
  no_cert.client_cert_file.clear();
  no_cert.client_key_file.clear();
  EXPECT_EQ(Call(address, Channel(no_cert)), grpc::StatusCode::UNAVAILABLE);
  // A client certificate of another CA is no better.
  fs::create_directories(dir_ + "/other");
  auto other = WriteLocalPki(dir_ + "/other");
  ASSERT_TRUE(other.ok()) << other.status();
  TlsOptions foreign = pki_.Options();
  foreign.client_cert_file = other->client_cert_file;
  foreign.client_key_file = other->client_key_file;
  EXPECT_EQ(Call(address, Channel(foreign)), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace kvtier
