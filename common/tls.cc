#include "common/tls.h"

#include <fcntl.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

// The last OpenSSL error of this thread, as text (the queue is emptied).
std::string OpenSslError() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    out = buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view key) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat(key, " ", path, ": cannot be read"));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WarnPlaintext(absl::string_view endpoint) {
  spdlog::warn(
      "{}: plain text (tls.plaintext): the endpoint is UNAUTHENTICATED and unencrypted; any "
      "peer that reaches it can call it (local development only, docs/security.md)",
      std::string(endpoint));
}

// Loads a certificate chain and its key into `ctx` and checks that they match.
absl::Status UsePair(SSL_CTX* ctx, const std::string& cert, const std::string& key,
                     absl::string_view cert_key, absl::string_view key_key) {
  KVTIER_RETURN_IF_ERROR(ReadFile(cert, cert_key).status());
  KVTIER_RETURN_IF_ERROR(ReadFile(key, key_key).status());
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_key, " ", cert, ": not a PEM certificate: ", OpenSslError()));
  }
  BIO* bio = BIO_new_file(key.c_str(), "r");
  EVP_PKEY* pkey =
      bio != nullptr ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  if (pkey == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_key, " ", key, ": not a PEM private key: ", OpenSslError()));
  }
  const int used = SSL_CTX_use_PrivateKey(ctx, pkey);
  EVP_PKEY_free(pkey);
  if (used != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(key_key, " ", key, " does not match ", cert_key,
                                                   " ", cert, ": ", OpenSslError()));
  }
  return absl::OkStatus();
}

absl::Status UseCa(SSL_CTX* ctx, const std::string& ca) {
  KVTIER_RETURN_IF_ERROR(ReadFile(ca, "tls.ca_file").status());
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tls.ca_file ", ca, ": no PEM CA certificate: ", OpenSslError()));
  }
  return absl::OkStatus();
}

// An OpenSSL context of one side, which also validates every file that side uses.
absl::StatusOr<SslCtxPtr> NewContext(const TlsOptions& tls, bool server) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (ctx == nullptr) return absl::InternalError("SSL_CTX_new: " + OpenSslError());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  if (server) {
    KVTIER_RETURN_IF_ERROR(
        UsePair(ctx.get(), tls.cert_file, tls.key_file, "tls.cert_file", "tls.key_file"));
  } else if (!tls.client_cert_file.empty()) {
    KVTIER_RETURN_IF_ERROR(UsePair(ctx.get(), tls.client_cert_file, tls.client_key_file,
                                   "tls.client_cert_file", "tls.client_key_file"));
  }
  if (!server || tls.mutual) {
    if (tls.ca_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "TLS needs tls.ca_file to verify ", server ? "client certificates" : "the server"));
    }
    KVTIER_RETURN_IF_ERROR(UseCa(ctx.get(), tls.ca_file));
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

absl::StatusOr<std::string> ReadToken(const TlsOptions& tls) {
  if (tls.service_token_file.empty()) {
    return absl::InvalidArgumentError("TLS needs service_token_file (the service token)");
  }
  return ReadSecretFile(tls.service_token_file);
}

// Requires "authorization: Bearer TOKEN" on every call of a server.
class TokenChecker : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenChecker(std::string token) : expected_(kBearerPrefix + std::move(token)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext*, OutputMetadata* consumed,
                       OutputMetadata*) override {
    auto it = metadata.find(kAuthorizationHeader);
    if (it == metadata.end() ||
        !SecretEquals(absl::string_view(it->second.data(), it->second.size()), expected_)) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong service token");
    }
    consumed->emplace(std::string(it->first.data(), it->first.size()),
                      std::string(it->second.data(), it->second.size()));
    return grpc::Status::OK;
  }

 private:
  const std::string expected_;
};

// Sends "authorization: Bearer TOKEN" on every call of a channel.
class TokenSender : public grpc::MetadataCredentialsPlugin {
 public:
  explicit TokenSender(std::string token) : value_(kBearerPrefix + std::move(token)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status GetMetadata(grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
                           std::multimap<std::string, std::string>* metadata) override {
    metadata->emplace(kAuthorizationHeader, value_);
    return grpc::Status::OK;
  }

 private:
  const std::string value_;
};

}  // namespace

absl::StatusOr<std::string> ReadSecretFile(const std::string& path) {
  KVTIER_ASSIGN_OR_RETURN(std::string s, ReadFile(path, "secret file"));
  const std::string secret(absl::StripAsciiWhitespace(s));
  if (secret.empty())
    return absl::InvalidArgumentError(absl::StrCat("secret file ", path, " is empty"));
  return secret;
}

bool SecretEquals(absl::string_view a, absl::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls, absl::string_view endpoint) {
  if (tls.plaintext) {
    WarnPlaintext(endpoint);
    return grpc::InsecureServerCredentials();
  }
  KVTIER_RETURN_IF_ERROR(NewContext(tls, /*server=*/true).status());  // checks every file
  KVTIER_ASSIGN_OR_RETURN(std::string token, ReadToken(tls));
  grpc::SslServerCredentialsOptions o(
      tls.mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  KVTIER_ASSIGN_OR_RETURN(pair.cert_chain, ReadFile(tls.cert_file, "tls.cert_file"));
  KVTIER_ASSIGN_OR_RETURN(pair.private_key, ReadFile(tls.key_file, "tls.key_file"));
  o.pem_key_cert_pairs.push_back(std::move(pair));
  if (tls.mutual) {
    KVTIER_ASSIGN_OR_RETURN(o.pem_root_certs, ReadFile(tls.ca_file, "tls.ca_file"));
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(o);
  creds->SetAuthMetadataProcessor(std::make_shared<TokenChecker>(std::move(token)));
  spdlog::info("{}: TLS{}, service token required", std::string(endpoint),
               tls.mutual ? " with client certificates (mutual)" : "");
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls) {
  if (tls.plaintext) return grpc::InsecureChannelCredentials();
  KVTIER_RETURN_IF_ERROR(NewContext(tls, /*server=*/false).status());  // checks every file
  KVTIER_ASSIGN_OR_RETURN(std::string token, ReadToken(tls));
  grpc::SslCredentialsOptions o;
  KVTIER_ASSIGN_OR_RETURN(o.pem_root_certs, ReadFile(tls.ca_file, "tls.ca_file"));
  if (!tls.client_cert_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(o.pem_cert_chain,
                            ReadFile(tls.client_cert_file, "tls.client_cert_file"));
    KVTIER_ASSIGN_OR_RETURN(o.pem_private_key,
                            ReadFile(tls.client_key_file, "tls.client_key_file"));
  }
  return grpc::CompositeChannelCredentials(
      grpc::SslCredentials(o),
      grpc::MetadataCredentialsFromPlugin(std::make_unique<TokenSender>(std::move(token))));
}

absl::StatusOr<SslCtxPtr> MakeHttpsContext(const TlsOptions& tls, absl::string_view endpoint) {
  if (tls.plaintext) {
    WarnPlaintext(endpoint);
    return SslCtxPtr();
  }
  KVTIER_ASSIGN_OR_RETURN(SslCtxPtr ctx, NewContext(tls, /*server=*/true));
  spdlog::info("{}: TLS{}", std::string(endpoint),
               tls.mutual ? " with client certificates (mutual)" : "");
  return ctx;
}

// ---- The local PKI of `kvtier up` ----

namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr)
    return absl::InternalError(absl::StrCat("X509 extension ", value, ": ", OpenSslError()));
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (ok != 1) return absl::InternalError("X509_add_ext: " + OpenSslError());
  return absl::OkStatus();
}

// A certificate for `key` named `cn`, signed by `issuer` with `issuer_key` (self-signed when
// issuer is null), with the extensions `ext` (nid, value).
absl::StatusOr<X509Ptr> MakeCert(EVP_PKEY* key, const std::string& cn, X509* issuer,
                                 EVP_PKEY* issuer_key, int days,
                                 const std::vector<std::pair<int, const char*>>& ext) {
  X509Ptr x(X509_new());
  if (x == nullptr) return absl::InternalError("X509_new: " + OpenSslError());
  X509_set_version(x.get(), 2);
  BIGNUM* serial = BN_new();
  BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x.get()));
  BN_free(serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), int64_t{days} * 86400);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("kvtier local"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer != nullptr ? issuer : x.get();
  for (const auto& [nid, value] : ext) {
    KVTIER_RETURN_IF_ERROR(AddExtension(x.get(), signer, nid, value));
  }
  if (X509_sign(x.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) == 0) {
    return absl::InternalError("X509_sign: " + OpenSslError());
  }
  return x;
}

absl::StatusOr<PkeyPtr> NewKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) return absl::InternalError("EVP_EC_gen: " + OpenSslError());
  return key;
}

template <typename Write>
absl::StatusOr<std::string> Pem(Write write) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr || write(bio) != 1) {
    BIO_free(bio);
    return absl::InternalError("PEM write: " + OpenSslError());
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

absl::Status WriteKeyAndCert(EVP_PKEY* key, X509* cert, const std::string& key_path,
                             const std::string& cert_path) {
  KVTIER_ASSIGN_OR_RETURN(std::string key_pem, Pem([key](BIO* b) {
                            return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr,
                                                            nullptr);
                          }));
  KVTIER_ASSIGN_OR_RETURN(std::string cert_pem,
                          Pem([cert](BIO* b) { return PEM_write_bio_X509(b, cert); }));
  KVTIER_RETURN_IF_ERROR(WritePrivateFile(key_path, key_pem));
  std::ofstream f(cert_path, std::ios::trunc);
  f << cert_pem;
  if (!f) return absl::InternalError("cannot write " + cert_path);
  return absl::OkStatus();
}

// Whether the PEM certificate in `path` names every address of `ips` in its SAN.
bool CertCoversIps(const std::string& path, const std::vector<std::string>& ips) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(path.c_str(), "r"), BIO_free);
  if (bio == nullptr) return false;
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) return false;
  for (const std::string& ip : ips) {
    if (X509_check_ip_asc(cert.get(), ip.c_str(), 0) != 1) return false;
  }
  return true;
}

}  // namespace

TlsOptions LocalPki::Options() const {
  TlsOptions o;
  o.ca_file = ca_file;
  o.cert_file = cert_file;
  o.key_file = key_file;
  o.mutual = true;
  o.client_cert_file = client_cert_file;
  o.client_key_file = client_key_file;
  o.service_token_file = service_token_file;
  return o;
}

std::string RandomHex(int bytes) {
  std::string raw(static_cast<size_t>(bytes), '\0');
  KVTIER_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), bytes) == 1,
               "RAND_bytes failed");
  return absl::BytesToHexString(raw);
}

absl::Status WritePrivateFile(const std::string& path, absl::string_view contents) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", path));
  fchmod(fd, 0600);  // an existing file keeps its mode otherwise
  const ssize_t n = write(fd, contents.data(), contents.size());
  const bool ok = n == static_cast<ssize_t>(contents.size()) && close(fd) == 0;
  if (!ok) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

LocalPki LocalPki::In(const std::string& dir) {
  LocalPki p;
  p.ca_file = dir + "/ca.pem";
  p.cert_file = dir + "/server.pem";
  p.key_file = dir + "/server.key";
  p.client_cert_file = dir + "/client.pem";
  p.client_key_file = dir + "/client.key";
  p.service_token_file = dir + "/service_token";
  return p;
}

absl::StatusOr<LocalPki> WriteLocalPki(const std::string& dir, int days,
                                       const std::vector<std::string>& server_ips) {
  const LocalPki p = LocalPki::In(dir);
  bool all = true;
  for (const std::string* f : {&p.ca_file, &p.cert_file, &p.key_file, &p.client_cert_file,
                               &p.client_key_file, &p.service_token_file}) {
    all = all && fs::exists(*f);
  }
  if (all && CertCoversIps(p.cert_file, server_ips)) return p;
  std::string san = "IP:127.0.0.1,DNS:localhost";
  for (const std::string& ip : server_ips) absl::StrAppend(&san, ",IP:", ip);
  KVTIER_ASSIGN_OR_RETURN(PkeyPtr ca_key, NewKey());
  KVTIER_ASSIGN_OR_RETURN(X509Ptr ca,
                          MakeCert(ca_key.get(), "kvtier local CA", nullptr, nullptr, days,
                                   {{NID_basic_constraints, "critical,CA:TRUE"},
                                    {NID_key_usage, "critical,keyCertSign,cRLSign"},
                                    {NID_subject_key_identifier, "hash"}}));
  KVTIER_ASSIGN_OR_RETURN(PkeyPtr server_key, NewKey());
  KVTIER_ASSIGN_OR_RETURN(X509Ptr server,
                          MakeCert(server_key.get(), "kvtier server", ca.get(), ca_key.get(), days,
                                   {{NID_basic_constraints, "critical,CA:FALSE"},
                                    {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                                    {NID_ext_key_usage, "serverAuth"},
                                    {NID_subject_alt_name, san.c_str()},
                                    {NID_authority_key_identifier, "keyid"}}));
  KVTIER_ASSIGN_OR_RETURN(PkeyPtr client_key, NewKey());
  KVTIER_ASSIGN_OR_RETURN(X509Ptr client,
                          MakeCert(client_key.get(), "kvtier client", ca.get(), ca_key.get(), days,
                                   {{NID_basic_constraints, "critical,CA:FALSE"},
                                    {NID_key_usage, "critical,digitalSignature"},
                                    {NID_ext_key_usage, "clientAuth"},
                                    {NID_authority_key_identifier, "keyid"}}));
  // The CA's key signs nothing after this run: it is not kept.
  KVTIER_ASSIGN_OR_RETURN(std::string ca_pem,
                          Pem([&ca](BIO* b) { return PEM_write_bio_X509(b, ca.get()); }));
  {
    std::ofstream f(p.ca_file, std::ios::trunc);
    f << ca_pem;
    if (!f) return absl::InternalError("cannot write " + p.ca_file);
  }
  KVTIER_RETURN_IF_ERROR(WriteKeyAndCert(server_key.get(), server.get(), p.key_file, p.cert_file));
  KVTIER_RETURN_IF_ERROR(
      WriteKeyAndCert(client_key.get(), client.get(), p.client_key_file, p.client_cert_file));
  KVTIER_RETURN_IF_ERROR(WritePrivateFile(p.service_token_file, RandomHex(32) + "\n"));
  return p;
}

}  // namespace kvtier
