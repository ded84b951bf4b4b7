// How a kvtier process secures its gRPC and HTTP endpoints and its calls to other kvtier
// processes: TLS certificates (mutual TLS as an option) and the service token, or plain text
// for local development only (docs/security.md). Part of the client API (include/kvtier/): the
// store client takes one (StoreClientOptions::tls). Turned into credentials by common/tls.h
// (library kvtier_tls); declared as options (the `tls.*` keys and `service_token_file`) by
// DeclareTlsOptions of common/options.h.
//
// A plain value type; thread-compatible.
#ifndef KVTIER_TLS_OPTIONS_H_
#define KVTIER_TLS_OPTIONS_H_

#include <string>

namespace kvtier {

struct TlsOptions {
  // No TLS and no service token: every endpoint of the process is unauthenticated (it says so
  // in a WARNING at start-up). Only when configured; local development. Default: false.
  bool plaintext = false;
  // PEM CA certificates that verify peers: a client checks the server's certificate with them,
  // a server with `mutual` checks the client's. Default: none.
  std::string ca_file;
  // PEM certificate chain and private key a server presents. Default: none.
  std::string cert_file;
  std::string key_file;
  // Servers: require a client certificate signed by ca_file (mutual TLS). Default: false.
  bool mutual = false;
  // PEM certificate and private key a client presents (for servers with `mutual`). Default:
  // none.
  std::string client_cert_file;
  std::string client_key_file;
  // File holding the service token: sent on every internal gRPC call ("authorization: Bearer
  // TOKEN") and required by every gRPC server. Required with TLS. Default: none.
  std::string service_token_file;
};

}  // namespace kvtier

#endif  // KVTIER_TLS_OPTIONS_H_
