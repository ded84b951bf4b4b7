// kvtier-router's core: the OpenAI-compatible HTTP server (cpp-httplib) in front of the prefill
// and decode workers (gRPC), with prefix-affinity placement, streaming, stop sequences and
// failure handling. docs/serving.md, "Router", describes the behaviour.
//
// Per request (one httplib pool thread each): parse and validate, tokenize (chat template →
// text → ids), pick a decode worker (longest remembered prefix of block keys, then fewest in
// flight), call Prefill on the least-loaded prefill worker when enough of the prompt is
// uncached, then stream Generate and detokenize incrementally. gRPC calls block the request
// thread. A background thread refreshes every worker's GetWorkerInfo once a second.
//
// Ownership: owns the HTTP server, the gRPC channels, the tokenizer and the metrics.
// Thread-safety: Start and Stop from one owner thread; handlers run on the server's threads and
// share state under mu_.
#ifndef KVTIER_ROUTER_ROUTER_H_
#define KVTIER_ROUTER_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/block_key.h"
#include "common/metrics.h"
#include "engine/chat_template.h"
#include "engine/tokenizer.h"
#include "kvtier/v1/worker.grpc.pb.h"
#include "router/openai_api.h"
#include "router/placement.h"
#include "router/router_options.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace grpc {
class ClientContext;
}

namespace kvtier::router {

class Router {
 public:
  // Loads the tokenizer and creates the worker channels (no connection is made yet).
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options);
  ~Router();  // Stop()s.
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Asks every worker for its info once, binds the HTTP port and starts serving and the
  // refresh thread. Returns the bound port.
  absl::StatusOr<int> Start();
  // Graceful stop: in-flight generations are cancelled (streams end with an error event,
  // others with 503), the listener closes, handlers finish. Idempotent.
  void Stop();

  int port() const { return port_; }

 private:
  // Mutable state of one worker, under mu_.
  struct WorkerState {
    bool alive = false;
    v1::WorkerInfo info;
    std::optional<NamespaceId> ns;  // from info.namespace_id
    int in_flight = 0;
    std::unique_ptr<KeyLru> keys;  // decode workers: block keys sent there
    Gauge* in_flight_gauge = nullptr;
    Gauge* up_gauge = nullptr;
  };
  // What one generation needs besides the prompt.
  struct GenParams {
    uint32_t max_tokens = 0;
    float temperature = 1.0f;
    float top_p = 1.0f;
    int32_t top_k = 0;
    uint64_t seed = 0;
    uint32_t n = 1;
    bool cache = true;
    std::vector<std::string> stop;
  };
  // Called for each piece of a choice's text, in order; `finish_reason` non-empty on its last
  // call. Returns false when the client is gone.
  using EmitFn =
      std::function<bool(int index, const std::string& text, const std::string& finish_reason)>;
  struct PromptResult {
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
    int64_t cached_tokens = 0;
  };

  explicit Router(RouterOptions options);

  void RegisterRoutes();
  void HandleGenerate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void HandleHealth(httplib::Response& res);
  static void SendError(const ApiError& error, httplib::Response& res);

  // Tokenizes the request's prompts (one per completion prompt; one for chat).
  std::optional<ApiError> Tokenize(const ApiRequest& request,
                                   std::vector<std::vector<uint32_t>>* prompts) const;
  // Runs one prompt with `params` (retrying once on another decode worker when the first fails
  // before any text was emitted). `client_gone` is set when `emit` returned false.
  std::optional<ApiError> RunPrompt(const std::vector<uint32_t>& prompt, const GenParams& params,
                                    int index_base, const EmitFn& emit, PromptResult* result,
                                    bool* client_gone);
  // One Generate call on decode worker `w`. `emitted` tells whether any text reached `emit`.
  grpc::Status GenerateOn(int w, const std::vector<uint32_t>& prompt, const GenParams& params,
                          int index_base, const EmitFn& emit, PromptResult* result, bool* emitted,
                          bool* client_gone, std::vector<uint32_t>* generated0);
  // Returns the prompt tokens the prefill worker computed for this request (0 when skipped or
  // failed): the decode worker reports them as fetched, but for the client they were not
  // cached.
  uint32_t MaybePrefill(const std::vector<uint32_t>& prompt, size_t cached_prefix_tokens);

  // Picks a decode worker (not in `exclude`) and counts the request in flight there; -1 when
  // none is alive. Sets `matched_tokens` to its remembered prefix.
  int AcquireDecode(const std::vector<uint32_t>& prompt, const std::vector<int>& exclude,
                    size_t* matched_tokens);
  void ReleaseDecode(int w);
  void RememberKeys(int w, const std::vector<uint32_t>& tokens);
  // The smallest max_context of the live decode workers; 0 when none is alive.
  int64_t MaxContext();

  // The refresh thread's work: GetWorkerInfo on every worker.
  void RefreshWorkers();
  void RefreshLoop();

  bool Register(grpc::ClientContext* ctx);  // false once stopping
  void Unregister(grpc::ClientContext* ctx);

  const RouterOptions options_;
  std::optional<engine::Tokenizer> tokenizer_;
  std::optional<engine::ChatFormat> chat_format_;
  std::vector<int32_t> stop_token_ids_;  // chat end-of-turn + eos ids, never shown as text
  absl::flat_hash_set<int32_t> stop_token_set_;
  const int64_t created_;  // Unix seconds, for "created" fields
  const uint64_t id_salt_;
  std::atomic<uint64_t> next_id_{0};

  std::vector<std::unique_ptr<v1::DecodeWorker::Stub>> decode_stubs_;
  std::vector<std::unique_ptr<v1::PrefillWorker::Stub>> prefill_stubs_;

  MetricsRegistry metrics_;
  Counter* prompt_tokens_total_;
  Counter* completion_tokens_total_;
  Counter* cached_tokens_total_;
  Counter* prefill_calls_ok_;
  Counter* prefill_calls_failed_;
  Counter* prefill_skipped_;
  Counter* retries_total_;
  Histogram* ttft_seconds_;
  Histogram* latency_seconds_;

  absl::Mutex mu_;
  std::vector<WorkerState> decode_ ABSL_GUARDED_BY(mu_);
  std::vector<WorkerState> prefill_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<grpc::ClientContext*> active_calls_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex refresh_mu_;
  bool refresh_stop_ ABSL_GUARDED_BY(refresh_mu_) = false;
  std::thread refresh_thread_;

  std::unique_ptr<httplib::Server> server_;
  std::thread listen_thread_;
  int port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace kvtier::router

#endif  // KVTIER_ROUTER_ROUTER_H_
