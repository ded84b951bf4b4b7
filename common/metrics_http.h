// HTTP endpoint serving a MetricsRegistry: GET /metrics (Prometheus text) and GET /healthz.
// Built on cpp-httplib; runs its own listener thread(s).
//
// Thread-safety: Start/Stop from one owner thread; the registry must outlive the server.
#ifndef KVTIER_COMMON_METRICS_HTTP_H_
#define KVTIER_COMMON_METRICS_HTTP_H_

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/metrics.h"

namespace httplib {
class Server;
}

namespace kvtier {

class MetricsHttpServer {
 public:
  // Binds host:port (port 0 picks a free port) and starts serving. Fails with a clear status
  // when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                                  const MetricsRegistry* registry);
  ~MetricsHttpServer();  // Stops.

  int port() const { return port_; }
  void Stop();

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace kvtier

#endif  // KVTIER_COMMON_METRICS_HTTP_H_
