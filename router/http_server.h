// kvtier-router's httplib server (docs/serving.md, "Limits"): httplib's connection loop
// (keep-alive: one request after another on a connection) over a socket stream of its own that
// bounds the bytes one request may read. httplib 0.11.4 (Debian 12) reads a request line or
// header line whole before it checks its length, and keeps any number of header lines, so
// without the bound a client could grow one request's memory for as long as it sends. A request
// reads at most max_body_bytes + kDrainBytes + kMaxHeaderBytes: past that its reads fail (httplib
// answers 400, or the body reader gives up) and the connection is closed.
//
// With a TLS context (common/tls.h, MakeHttpsContext) every connection is HTTPS: the handshake
// runs on the connection's task-queue thread under the read/write timeouts (set on the socket),
// then the same loop reads and writes through OpenSSL (docs/security.md). httplib's own
// SSLServer cannot be used: it has its own connection loop, without the bound.
//
// Everything else is httplib::Server (routes, handlers, task queue). Thread-safe as it: each
// connection is served on one task-queue thread.
#ifndef KVTIER_ROUTER_HTTP_SERVER_H_
#define KVTIER_ROUTER_HTTP_SERVER_H_

#include <httplib.h>

#include <cstdint>

#include "common/tls.h"

namespace kvtier::router {

class HttpServer : public httplib::Server {
 public:
  // The request line and headers of one request: at most this many bytes.
  static constexpr uint64_t kMaxHeaderBytes = 64 << 10;
  // Past max_body_bytes, a body is read on and dropped for up to this many bytes more, so that
  // a client still sending it reads the 413 rather than a reset connection.
  static constexpr uint64_t kDrainBytes = 1 << 20;

  // `tls`: HTTPS; null: plain HTTP.
  HttpServer(uint64_t max_body_bytes, SslCtxPtr tls);

 private:
  // Overrides httplib's (private, virtual) loop over one accepted connection.
  bool process_and_close_socket(socket_t sock) override;

  const uint64_t max_request_bytes_;
  const SslCtxPtr tls_;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_HTTP_SERVER_H_
