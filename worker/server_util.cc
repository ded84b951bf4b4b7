#include "worker/server_util.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvtier/v1/worker.pb.h"
#include "spdlog/spdlog.h"
#include "worker/request_checks.h"

namespace kvtier::worker {

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int StopSignals::Wait() {
  int sig = 0;
  sigwait(&set_, &sig);
  return sig;
}

absl::Status WriteReadyFile(const std::string& path, int grpc_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp);
    f << "{\"grpc_port\":" << grpc_port << ",\"pid\":" << getpid() << "}\n";
    if (!f) return absl::InternalError(absl::StrCat("cannot write ready file ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services, int* port) {
  grpc::ServerBuilder builder;
  *port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  // A prompt of 128k u32 tokens is 512 KiB on the wire (plus varint overhead).
  builder.SetMaxReceiveMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen));
  }
  return server;
}

absl::StatusOr<WorkerParts> MakeWorkerParts(const WorkerOptions& options,
                                            absl::string_view no_store_note) {
  WorkerParts parts;
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine =
      engine::Engine::Create(options.model_dir, ToEngineOptions(options));
  if (!engine.ok()) {
    return absl::Status(engine.status().code(),
                        absl::StrCat("cannot load the model: ", engine.status().message()));
  }
  parts.engine = std::move(*engine);
  if (!options.stores.empty()) {
    absl::StatusOr<std::unique_ptr<StoreClient>> store =
        StoreClient::Create(ToStoreClientOptions(options));
    if (!store.ok()) {
      return absl::Status(store.status().code(),
                          absl::StrCat("store client: ", store.status().message()));
    }
    parts.store = std::move(*store);
  } else {
    spdlog::warn("no store configured: {}", std::string(no_store_note));
  }
  parts.tier = std::make_unique<KvTier>(parts.engine.get(), parts.store.get());
  // Page-lock a same-host store's pool now rather than on the first request.
  parts.tier->RegisterStorePools();
  return parts;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> ServeWorker(absl::string_view binary,
                                                          const WorkerOptions& options,
                                                          const WorkerParts& parts,
                                                          grpc::Service* service) {
  int port = 0;
  KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<grpc::Server> server,
                          StartGrpcServer(options.listen, {service}, &port));
  if (!options.ready_file.empty()) {
    KVTIER_RETURN_IF_ERROR(WriteReadyFile(options.ready_file, port));
  }
  spdlog::info("{} serving {} on port {}: {} KV pages of {} tokens, {} store node(s)",
               std::string(binary), options.model_name, port, parts.engine->num_pages(),
               options.block_tokens, options.stores.size());
  return server;
}

void FillWorkerInfo(absl::string_view role, const WorkerOptions& options,
                    const engine::Engine& engine, const KvTier& tier, v1::WorkerInfo* info) {
  info->set_role(std::string(role));
  info->set_model(options.model_name);
  info->set_namespace_id(std::string(KeyBytes(tier.namespace_id())));
  info->set_block_tokens(tier.block_tokens());
  info->set_vocab_size(static_cast<uint32_t>(engine.config().vocab_size));
  info->set_max_context(static_cast<uint32_t>(MaxContext(engine.config())));
  info->set_backend(options.backend);
  info->set_total_pages(static_cast<uint32_t>(engine.num_pages()));
  bool connected = false;
  if (tier.store() != nullptr) {
    for (const StoreNodeInfo& n : tier.store()->Nodes()) connected |= n.connected;
  }
  info->set_store_connected(connected);
}

}  // namespace kvtier::worker
