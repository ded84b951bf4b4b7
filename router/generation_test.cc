#include "router/generation.h"

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/testing/test_util.h"
#include "engine/testing/tokenizer_writer.h"
#include "gtest/gtest.h"
#include "router/fake_worker_client.h"
#include "text/tokenizer.h"

namespace kvtier::router {
namespace {

constexpr uint32_t kBlock = 4;
constexpr int64_t kSkipPrefillBelow = 8;

// What a run emitted, per choice index.
class Emitted {
 public:
  // `gone_after`: emit returns false from that call on (the client went away); -1: never.
  explicit Emitted(int gone_after = -1) : gone_after_(gone_after) {}

  EmitFn Fn() {
    return [this](int index, const std::string& text, const std::string& finish) {
      absl::MutexLock lock(&mu_);
      text_[index] += text;
      if (!finish.empty()) finish_[index] = finish;
      if (!text.empty() && !got_text_.HasBeenNotified()) got_text_.Notify();
      ++calls_;
      return gone_after_ < 0 || calls_ <= gone_after_;
    };
  }
  std::string text(int index) {
    absl::MutexLock lock(&mu_);
    return text_[index];
  }
  std::string finish(int index) {
    absl::MutexLock lock(&mu_);
    return finish_[index];
  }
  size_t choices() {
    absl::MutexLock lock(&mu_);
    return text_.size();
  }
  absl::Notification& got_text() { return got_text_; }

 private:
  const int gone_after_;
  absl::Mutex mu_;
  std::map<int, std::string> text_;
  std::map<int, std::string> finish_;
  int calls_ = 0;
  absl::Notification got_text_;
};

class GenerationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::ScopedTempDir("generation_test");
    absl::StatusOr<testing::SpecialTokenIds> ids = testing::WriteTokenizer(
        *engine::PresetConfig("tiny"), text::ChatFormat::kLlama3, dir_->path());
    ASSERT_TRUE(ids.ok()) << ids.status();
    absl::StatusOr<text::Tokenizer> tok = text::Tokenizer::Load(dir_->path());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = new text::Tokenizer(*std::move(tok));
    eot_ = *tokenizer_->IdOf("<|eot_id|>");
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }

  static RouterOptions Options() {
    RouterOptions o;
    o.skip_prefill_below = kSkipPrefillBelow;
    return o;
  }

  GenerationTest()
      : fleet_(Options(), 2, 1, ComputeNamespace(NamespaceParams()), kBlock, 256, &metrics_),
        generation_(Options(), tokenizer_, {static_cast<int32_t>(eot_)}, fleet_.pool.get(),
                    &metrics_) {
    fleet_.pool->Refresh();
  }

  static std::vector<TokenId> Encode(const std::string& text) {
    absl::StatusOr<std::vector<TokenId>> ids = tokenizer_->Encode(text, false);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<TokenId>();
  }

  // A request for `prompts` with max_tokens 32.
  static GenerationRequest Request(std::vector<std::vector<TokenId>> prompts, uint32_t n = 1) {
    GenerationRequest r;
    r.id = "cmpl-test";
    r.prompts = std::move(prompts);
    r.max_tokens = 32;
    r.n = n;
    return r;
  }

  // The messages of choice `index` generating `tokens`, one token each, the first with the
  // prompt accounting, the last with `finish` ("" for none).
  static std::vector<v1::GenerateResponse> Messages(uint32_t index,
                                                    const std::vector<TokenId>& tokens,
                                                    const std::string& finish,
                                                    uint32_t prompt_tokens = 0,
                                                    uint32_t cached_tokens = 0) {
    std::vector<v1::GenerateResponse> out;
    for (size_t i = 0; i < std::max<size_t>(tokens.size(), 1); ++i) {
      v1::GenerateResponse m;
      m.set_index(index);
      if (i < tokens.size()) m.add_tokens(tokens[i]);
      if (i == 0) {
        m.set_prompt_tokens(prompt_tokens);
        m.set_cached_tokens(cached_tokens);
      }
      out.push_back(std::move(m));
    }
    out.back().set_finish_reason(finish);
    return out;
  }

  // A stream that generates `text` and ends with "length".
  static GenerateScript Answer(const std::string& text, uint32_t prompt_tokens = 0,
                               uint32_t cached_tokens = 0) {
    return {Messages(0, Encode(text), "length", prompt_tokens, cached_tokens), absl::OkStatus()};
  }

  double Counter(const char* name, const MetricLabels& labels = {}) {
    return metrics_.AddCounter(name, "", labels)->Value();
  }

  FakeWorkerClient& decode(int i) { return *fleet_.decode[i]; }
  FakeWorkerClient& prefill() { return *fleet_.prefill[0]; }

  static testing::ScopedTempDir* dir_;
  static text::Tokenizer* tokenizer_;
  static TokenId eot_;

  MetricsRegistry metrics_;
  FakeFleet fleet_;
  Generation generation_;
};

testing::ScopedTempDir* GenerationTest::dir_ = nullptr;
text::Tokenizer* GenerationTest::tokenizer_ = nullptr;
TokenId GenerationTest::eot_ = 0;

TEST_F(GenerationTest, StreamsTheTextAndSendsTheRequestAsked) {
  const std::vector<TokenId> prompt = Encode("Tell me about the weather.");
  const std::string answer = "It is sunny and warm, with a light breeze from the sea.";
  decode(0).AddGenerate(Answer(answer, prompt.size(), 0));
  GenerationRequest request = Request({prompt});
  request.temperature = 0.5f;
  request.top_k = 3;
  request.seed = 42;
  Emitted emitted;
  const GenerationResult r = generation_.Run(request, emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_FALSE(r.client_gone);
  EXPECT_EQ(emitted.text(0), answer);
  EXPECT_EQ(emitted.finish(0), "length");
  EXPECT_EQ(r.usage.prompt_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(r.usage.completion_tokens, static_cast<int64_t>(Encode(answer).size()));
  EXPECT_EQ(r.usage.cached_tokens, 0);

  const std::vector<v1::GenerateRequest> sent = decode(0).generate_requests();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(std::vector<TokenId>(sent[0].tokens().begin(), sent[0].tokens().end()), prompt);
  EXPECT_EQ(sent[0].n(), 1u);
  EXPECT_TRUE(sent[0].use_cache());
  EXPECT_EQ(sent[0].sampling().max_tokens(), 32u);
  EXPECT_EQ(sent[0].sampling().temperature(), 0.5f);
  EXPECT_EQ(sent[0].sampling().top_k(), 3);
  EXPECT_EQ(sent[0].sampling().seed(), 42u);
  ASSERT_EQ(sent[0].sampling().stop_token_ids_size(), 1);
  EXPECT_EQ(sent[0].sampling().stop_token_ids(0), eot_);
  EXPECT_EQ(Counter("kvtier_router_completion_tokens_total"), r.usage.completion_tokens);
}

TEST_F(GenerationTest, RetriesOnAnotherWorkerWhenTheFirstFailsBeforeStreaming) {
  decode(0).AddGenerate({{}, absl::UnavailableError("connection refused")});
  decode(1).AddGenerate(Answer("Hello from the second worker."));
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(emitted.text(0), "Hello from the second worker.");
  EXPECT_EQ(decode(0).generate_requests().size(), 1u);
  EXPECT_EQ(decode(1).generate_requests().size(), 1u);
  EXPECT_EQ(Counter("kvtier_router_decode_retries_total"), 1);
  EXPECT_EQ(fleet_.pool->DecodeWorkersUp(), 1);  // the unavailable one, until the next refresh
}

TEST_F(GenerationTest, RetriesWhenOnlyThePromptAccountingArrived) {
  decode(0).AddGenerate({Messages(0, {}, "", 2, 0), absl::InternalError("engine failed")});
  decode(1).AddGenerate(Answer("Fine."));
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(emitted.text(0), "Fine.");
  EXPECT_EQ(fleet_.pool->DecodeWorkersUp(), 2);  // not unavailable: still up
}

TEST_F(GenerationTest, FailsWithoutRetryOnceTextWasStreamed) {
  std::vector<v1::GenerateResponse> partial = Messages(0, Encode("Half an ans"), "");
  decode(0).AddGenerate({partial, absl::UnavailableError("the decode worker is shutting down")});
  decode(1).AddGenerate(Answer("Never sent."));
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->http_status, 503);
  EXPECT_EQ(r.error->type, "server_error");
  EXPECT_EQ(r.error->message, "decode worker: the decode worker is shutting down");
  EXPECT_EQ(emitted.text(0), "Half an ans");
  EXPECT_EQ(emitted.finish(0), "");
  EXPECT_TRUE(decode(1).generate_requests().empty());
  EXPECT_EQ(Counter("kvtier_router_decode_retries_total"), 0);
}

TEST_F(GenerationTest, FailsWithoutRetryOnAnInvalidArgument) {
  decode(0).AddGenerate({{}, absl::InvalidArgumentError("token id out of range")});
  decode(1).AddGenerate(Answer("Never sent."));
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->http_status, 400);
  EXPECT_EQ(r.error->message, "decode worker: token id out of range");
  EXPECT_TRUE(decode(1).generate_requests().empty());
}

TEST_F(GenerationTest, FailsAfterTheRetryFailsToo) {
  decode(0).AddGenerate({{}, absl::UnavailableError("first")});
  decode(1).AddGenerate({{}, absl::ResourceExhaustedError("second")});
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->http_status, 503);
  EXPECT_EQ(r.error->message, "decode worker: second");
  EXPECT_EQ(Counter("kvtier_router_decode_retries_total"), 1);
}

TEST_F(GenerationTest, AStopSequenceEndsTheChoiceAndCancelsTheStream) {
  decode(0).AddGenerate(Answer("The answer is near. STOP here and never more text after it."));
  GenerationRequest request = Request({Encode("Hi")});
  request.stop = {"STOP"};
  Emitted emitted;
  const GenerationResult r = generation_.Run(request, emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(emitted.text(0), "The answer is near. ");
  EXPECT_EQ(emitted.finish(0), "stop");
  EXPECT_EQ(decode(0).cancelled_streams(), 1);
  EXPECT_TRUE(decode(1).generate_requests().empty());
}

TEST_F(GenerationTest, StopTokensAreCountedButNeverShown) {
  std::vector<TokenId> tokens = Encode("Goodbye.");
  tokens.push_back(eot_);
  decode(0).AddGenerate({Messages(0, tokens, "stop"), absl::OkStatus()});
  Emitted emitted;
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(emitted.text(0), "Goodbye.");
  EXPECT_EQ(emitted.finish(0), "stop");
  EXPECT_EQ(r.usage.completion_tokens, static_cast<int64_t>(tokens.size()));
}

TEST_F(GenerationTest, PrefillIsSkippedWhenTheUncachedPartIsShort) {
  const std::vector<TokenId> short_prompt(kSkipPrefillBelow - 1, 65);
  decode(0).AddGenerate(Answer("a"));
  ASSERT_FALSE(generation_.Run(Request({short_prompt}), Emitted().Fn()).error.has_value());
  EXPECT_TRUE(prefill().prefill_requests().empty());
  EXPECT_EQ(Counter("kvtier_router_prefill_calls_total", {{"result", "skipped"}}), 1);

  // Long enough: prefill computes it first.
  std::vector<TokenId> prompt(3 * kBlock, 0);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 100 + i;
  decode(0).AddGenerate(Answer("b"));
  ASSERT_FALSE(generation_.Run(Request({prompt}), Emitted().Fn()).error.has_value());
  ASSERT_EQ(prefill().prefill_requests().size(), 1u);
  const v1::PrefillRequest sent = prefill().prefill_requests()[0];
  EXPECT_EQ(std::vector<TokenId>(sent.tokens().begin(), sent.tokens().end()), prompt);
  EXPECT_EQ(Counter("kvtier_router_prefill_calls_total", {{"result", "ok"}}), 1);

  // The same prompt again: its blocks were remembered on decode worker 0, which gets it again
  // with nothing left uncached.
  decode(0).AddGenerate(Answer("c"));
  ASSERT_FALSE(generation_.Run(Request({prompt}), Emitted().Fn()).error.has_value());
  EXPECT_EQ(prefill().prefill_requests().size(), 1u);
  EXPECT_EQ(decode(0).generate_requests().size(), 3u);
  EXPECT_EQ(Counter("kvtier_router_prefill_calls_total", {{"result", "skipped"}}), 2);
}

TEST_F(GenerationTest, APrefillFailureIsNotFatal) {
  prefill().set_prefill_response(absl::UnavailableError("prefill down"));
  decode(0).AddGenerate(Answer("fine", 40, 0));
  const GenerationResult r =
      generation_.Run(Request({std::vector<TokenId>(40, 70)}), Emitted().Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(Counter("kvtier_router_prefill_calls_total", {{"result", "error"}}), 1);
}

TEST_F(GenerationTest, CachedTokensExcludeWhatPrefillComputedForThisRequest) {
  v1::PrefillResponse computed;
  computed.set_computed_tokens(32);
  prefill().set_prefill_response(computed);
  // The decode worker fetched 36 tokens' blocks: 32 of them prefill computed just now.
  decode(0).AddGenerate(Answer("ok", 40, 36));
  const GenerationResult r =
      generation_.Run(Request({std::vector<TokenId>(40, 70)}), Emitted().Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  EXPECT_EQ(r.usage.prompt_tokens, 40);
  EXPECT_EQ(r.usage.cached_tokens, 4);
  EXPECT_EQ(Counter("kvtier_router_cached_tokens_total"), 4);

  // Without the cache: no prefill, use_cache off, the worker's count as it is.
  decode(0).AddGenerate(Answer("ok", 40, 0));
  GenerationRequest request = Request({std::vector<TokenId>(40, 71)});
  request.cache = false;
  ASSERT_FALSE(generation_.Run(request, Emitted().Fn()).error.has_value());
  EXPECT_EQ(prefill().prefill_requests().size(), 1u);
  EXPECT_FALSE(decode(0).generate_requests().back().use_cache());
}

// docs/observability.md, "Request tracing": the worker calls carry the request id (ID-<i> and
// ID-<i>-prefill), and the worker's timing of the first message comes back with the router's.
TEST_F(GenerationTest, WorkerCallsCarryTheRequestIdAndTheTimingsComeBack) {
  v1::PrefillResponse computed;
  computed.set_computed_tokens(32);
  prefill().set_prefill_response(computed);
  GenerateScript script = Answer("ok", 40, 36);
  v1::Timing* t = script.messages[0].mutable_timing();
  t->set_queue_ms(1.5);
  t->set_fetch_ms(2.5);
  t->set_compute_ms(3.5);
  t->set_first_step_ms(4.5);
  t->set_first_tier_tokens(4);
  t->set_store_tokens(32);
  decode(0).AddGenerate(script);
  decode(0).AddGenerate(Answer("second", 7, 0));
  GenerationRequest request = Request({std::vector<TokenId>(40, 70), std::vector<TokenId>(7, 71)});
  request.request_id = "client-id.1";
  const GenerationResult r = generation_.Run(request, Emitted().Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  ASSERT_EQ(prefill().prefill_requests().size(), 1u);  // the second prompt is too short
  EXPECT_EQ(prefill().prefill_requests()[0].request_id(), "client-id.1-0-prefill");
  const std::vector<v1::GenerateRequest> sent = decode(0).generate_requests();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].request_id(), "client-id.1-0");
  EXPECT_EQ(sent[1].request_id(), "client-id.1-1");
  EXPECT_EQ(r.timing.worker.queue_ms(), 1.5);
  EXPECT_EQ(r.timing.worker.fetch_ms(), 2.5);
  EXPECT_EQ(r.timing.worker.compute_ms(), 3.5);
  EXPECT_EQ(r.timing.first_tier_tokens, 4u);
  EXPECT_EQ(r.timing.store_tokens, 32u);
  EXPECT_GE(r.timing.prefill_ms, 0);
  EXPECT_GT(r.timing.ttft_ms, 0);
  EXPECT_GE(r.timing.total_ms, r.timing.ttft_ms);
  EXPECT_EQ(r.usage.cached_tokens, 4);  // prefill's 32 were not cached for the client

  RequestTiming shown = r.timing;
  shown.prefill_ms = 12.25;
  shown.ttft_ms = 30;
  shown.total_ms = 45;
  EXPECT_EQ(ServerTiming(shown),
            "prefill;dur=12.2, queue;dur=1.5, fetch;dur=2.5, compute;dur=3.5, ttft;dur=30.0");
  EXPECT_EQ(TimingLogFields(r.usage, shown),
            "prompt=47 cached=4 (first_tier=4 store=32) prefill_call=12.2ms queue=1.5ms "
            "fetch=2.5ms compute=3.5ms ttft=30.0ms total=45.0ms");

  // Without a request id of its own, the calls derive theirs from the response id.
  decode(0).AddGenerate(Answer("third"));
  ASSERT_FALSE(generation_.Run(Request({Encode("Hi")}), Emitted().Fn()).error.has_value());
  EXPECT_EQ(decode(0).generate_requests().back().request_id(), "cmpl-test-0");
}

TEST_F(GenerationTest, ChoicesOfSeveralPromptsAndNAreIndexedPromptTimesNPlusI) {
  // Each prompt's two choices arrive interleaved on one stream.
  for (const auto& [first, second] :
       {std::pair<std::string, std::string>{"red apples", "green pears"},
        {"blue sky", "grey clouds"}}) {
    const std::vector<v1::GenerateResponse> a = Messages(0, Encode(first), "length", 3, 0);
    const std::vector<v1::GenerateResponse> b = Messages(1, Encode(second), "stop");
    GenerateScript s;
    for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
      if (i < a.size()) s.messages.push_back(a[i]);
      if (i < b.size()) s.messages.push_back(b[i]);
    }
    decode(0).AddGenerate(s);
  }
  Emitted emitted;
  const GenerationResult r =
      generation_.Run(Request({Encode("Fruit?"), Encode("Weather?")}, 2), emitted.Fn());
  EXPECT_FALSE(r.error.has_value()) << r.error->message;
  ASSERT_EQ(emitted.choices(), 4u);
  EXPECT_EQ(emitted.text(0), "red apples");
  EXPECT_EQ(emitted.finish(0), "length");
  EXPECT_EQ(emitted.text(1), "green pears");
  EXPECT_EQ(emitted.finish(1), "stop");
  EXPECT_EQ(emitted.text(2), "blue sky");
  EXPECT_EQ(emitted.text(3), "grey clouds");
  EXPECT_EQ(emitted.finish(3), "stop");
  const std::vector<v1::GenerateRequest> sent = decode(0).generate_requests();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].n(), 2u);
  EXPECT_NE(sent[0].request_id(), sent[1].request_id());
  EXPECT_EQ(r.usage.prompt_tokens, 6);
  EXPECT_EQ(r.usage.completion_tokens,
            static_cast<int64_t>(Encode("red apples").size() + Encode("green pears").size() +
                                 Encode("blue sky").size() + Encode("grey clouds").size()));
}

TEST_F(GenerationTest, MaxTokensZeroAnswersEmptyChoicesWithoutTheWorkers) {
  GenerationRequest request = Request({Encode("Hi there")}, 2);
  request.max_tokens = 0;
  Emitted emitted;
  const GenerationResult r = generation_.Run(request, emitted.Fn());
  EXPECT_FALSE(r.error.has_value());
  EXPECT_EQ(emitted.finish(0), "length");
  EXPECT_EQ(emitted.finish(1), "length");
  EXPECT_EQ(emitted.text(1), "");
  EXPECT_EQ(r.usage.prompt_tokens, static_cast<int64_t>(Encode("Hi there").size()));
  EXPECT_TRUE(decode(0).generate_requests().empty());
}

TEST_F(GenerationTest, AClientThatGoesAwayCancelsTheStreamWithoutRetry) {
  decode(0).AddGenerate({Messages(0, Encode("one two three four five six"), ""), absl::OkStatus(),
                         /*hold_open=*/true});
  decode(1).AddGenerate(Answer("Never sent."));
  Emitted emitted(/*gone_after=*/1);
  const GenerationResult r = generation_.Run(Request({Encode("Count")}), emitted.Fn());
  EXPECT_TRUE(r.client_gone);
  EXPECT_FALSE(r.error.has_value());
  EXPECT_EQ(decode(0).cancelled_streams(), 1);
  EXPECT_TRUE(decode(1).generate_requests().empty());
}

TEST_F(GenerationTest, StoppingThePoolCancelsInFlightGenerations) {
  decode(0).AddGenerate({Messages(0, Encode("Once upon a time"), ""), absl::OkStatus(),
                         /*hold_open=*/true});
  Emitted emitted;
  GenerationResult r;
  std::thread runner([&] { r = generation_.Run(Request({Encode("A story")}), emitted.Fn()); });
  ASSERT_TRUE(emitted.got_text().WaitForNotificationWithTimeout(absl::Seconds(10)));
  fleet_.pool->Stop();
  runner.join();
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->http_status, 503);
  EXPECT_EQ(r.error->message, "the router is shutting down");
  EXPECT_EQ(decode(0).cancelled_streams(), 1);
  EXPECT_EQ(decode(0).open_streams(), 0);
}

TEST_F(GenerationTest, NoLiveDecodeWorkerIsA503) {
  decode(0).set_up(false);
  decode(1).set_up(false);
  fleet_.pool->Refresh();
  const GenerationResult r = generation_.Run(Request({Encode("Hi")}), Emitted().Fn());
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->http_status, 503);
  EXPECT_EQ(r.error->message, "no decode worker is available");
}

}  // namespace
}  // namespace kvtier::router
