// TLS and the service token for kvtier's endpoints (docs/security.md): turns a TlsOptions
// (include/kvtier/tls_options.h) into gRPC server credentials (TLS, mutual TLS as an option,
// and an AuthMetadataProcessor that requires the service token on every call), gRPC channel
// credentials (TLS, the client certificate, and the token sent as "authorization: Bearer
// TOKEN" call metadata), and an OpenSSL server context for HTTPS (the router). Plain text only
// when TlsOptions::plaintext says so, with a WARNING that the endpoint is unauthenticated.
//
// Also WriteLocalPki: the local CA, certificates and secrets `kvtier up` generates.
//
// Every file is read when the credentials are built (start-up); a missing or bad file is a
// clear error naming it. Thread-safe: plain functions; the credentials they return are
// gRPC's (shared, thread-safe); an SSL_CTX is shared by the connections of its server.
#ifndef KVTIER_COMMON_TLS_H_
#define KVTIER_COMMON_TLS_H_

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvtier/tls_options.h"

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace kvtier {

// The metadata key and value prefix of the service token on a gRPC call.
inline constexpr char kAuthorizationHeader[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";

// The contents of a secret file (a service token), without surrounding whitespace. NotFound
// when it cannot be read, InvalidArgument when it is empty; both name the file.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path);

// Whether `a` equals `b`, in time that depends on their lengths only (CRYPTO_memcmp).
bool SecretEquals(absl::string_view a, absl::string_view b);

// Credentials of a gRPC server `endpoint` (for messages, e.g. "kvtier-store gRPC
// 127.0.0.1:50051"): plain text (logs the WARNING), or TLS with cert_file/key_file (with
// `mutual`: a client certificate signed by ca_file is required) and the service token required
// on every call (UNAUTHENTICATED otherwise).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls, absl::string_view endpoint);

// Credentials of a client of kvtier gRPC servers: plain text, or TLS verifying the server
// against ca_file (presenting client_cert_file when set) with the service token on every call.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls);

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// The TLS context of an HTTPS server `endpoint`: TLS 1.2+, cert_file/key_file (checked to
// match), with `mutual` a required client certificate signed by ca_file. Null with plaintext
// (after the WARNING).
absl::StatusOr<SslCtxPtr> MakeHttpsContext(const TlsOptions& tls, absl::string_view endpoint);

// What WriteLocalPki writes into a directory.
struct LocalPki {
  std::string ca_file;             // ca.pem: the local CA's certificate
  std::string cert_file;           // server.pem: SAN 127.0.0.1, localhost (and more), by the CA
  std::string key_file;            // server.key
  std::string client_cert_file;    // client.pem: for mutual TLS, signed by the CA
  std::string client_key_file;     // client.key
  std::string service_token_file;  // service_token: 32 random bytes, hex
  // The TlsOptions of a process of the local cluster that uses these files (mutual TLS).
  TlsOptions Options() const;
  // The paths of the files in `dir` (nothing is read or written).
  static LocalPki In(const std::string& dir);
};

// Creates, in `dir` (which must exist), a local CA (EC P-256, valid `days` days), a server
// certificate for 127.0.0.1, localhost and the IPv4 addresses `server_ips` (the hosts of a
// `kvtier up` cluster in network namespaces), a client certificate and a service token, unless
// they are there already and the server certificate covers `server_ips` (then they are reused;
// otherwise all are made anew). Keys and the token are mode 0600.
absl::StatusOr<LocalPki> WriteLocalPki(const std::string& dir, int days = 825,
                                       const std::vector<std::string>& server_ips = {});

// A random secret: `bytes` bytes from OpenSSL's RAND_bytes, hex.
std::string RandomHex(int bytes);

// Writes `contents` to `path` with mode 0600 (replacing it): for keys and secrets.
absl::Status WritePrivateFile(const std::string& path, absl::string_view contents);

}  // namespace kvtier

#endif  // KVTIER_COMMON_TLS_H_
