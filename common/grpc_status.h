// Conversions between absl::Status and grpc::Status (same codes, same message), for gRPC
// services and their clients.
//
// Inline functions over value types; thread-safe.
#ifndef KVTIER_COMMON_GRPC_STATUS_H_
#define KVTIER_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace kvtier {

inline grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace kvtier

#endif  // KVTIER_COMMON_GRPC_STATUS_H_
