#include "bench/serve_bench.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"
#include "common/status_macros.h"
#include "common/tls.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvtier::bench {
namespace {

using nlohmann::json;

std::string Words(int n, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> dist(0, kNumWords - 1);
  std::string out;
  for (int i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    out += kWords[dist(rng)];
  }
  return out;
}

// The shared system prompt of a phase: a tag that makes it unique to this run and phase, then
// about `n` words of repeated text.
std::string SystemPrompt(const std::string& tag, int n) {
  std::string out = absl::StrCat("[", tag, "] You are a helpful assistant.");
  for (int i = 0; i < n; ++i) absl::StrAppend(&out, " ", kWords[i % kNumWords]);
  return out;
}

// One request's outcome.
struct Sample {
  int turn = 0;  // 1-based
  bool ok = false;
  std::string error;
  double ttft_s = -1;  // < 0: no content delta arrived
  double tpot_s = -1;  // < 0: fewer than 2 completion tokens
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  std::string text;
};

struct Endpoint {
  std::string url;
  int timeout_s = 600;
  std::string ca_file;
  std::string api_key;
  std::unique_ptr<httplib::Client> Connect() const {
    auto c = std::make_unique<httplib::Client>(url);
    if (!ca_file.empty()) c->set_ca_cert_path(ca_file);
    c->enable_server_certificate_verification(true);
    if (!api_key.empty()) c->set_bearer_token_auth(api_key);
    c->set_connection_timeout(5, 0);
    c->set_read_timeout(timeout_s, 0);
    c->set_write_timeout(timeout_s, 0);
    return c;
  }
};

// Sends one streaming chat request and times it; parses the SSE stream line by line as it
// arrives.
Sample StreamChat(httplib::Client& client, const json& request, int turn) {
  Sample s;
  s.turn = turn;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = request.dump();
  req.headers.emplace("Content-Type", "application/json");
  req.headers.emplace("Accept", "text/event-stream");

  std::string pending;     // bytes after the last complete line
  std::string error_body;  // a non-200 body, for the message
  int status = 0;
  bool done = false, finished = false, saw_usage = false;
  int64_t first_ns = -1, finish_ns = -1;
  const int64_t start_ns = MonoNowNs();

  auto handle_line = [&](absl::string_view line) {
    if (line.empty() || !absl::ConsumePrefix(&line, "data:")) return;
    line = absl::StripLeadingAsciiWhitespace(line);
    if (line == "[DONE]") {
      done = true;
      return;
    }
    json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      if (s.error.empty()) s.error = absl::StrCat("bad SSE event: ", line.substr(0, 200));
      return;
    }
    if (j.contains("error")) {
      if (s.error.empty()) s.error = absl::StrCat("SSE error event: ", j["error"].dump());
      return;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      const json& u = j["usage"];
      s.prompt_tokens = u.value("prompt_tokens", int64_t{0});
      s.completion_tokens = u.value("completion_tokens", int64_t{0});
      if (u.contains("prompt_tokens_details") && u["prompt_tokens_details"].is_object()) {
        s.cached_tokens = u["prompt_tokens_details"].value("cached_tokens", int64_t{0});
      }
      saw_usage = true;
    }
    if (!j.contains("choices") || !j["choices"].is_array()) return;
    for (const json& c : j["choices"]) {
      if (c.contains("delta") && c["delta"].is_object()) {
        const json& d = c["delta"];
        if (d.contains("content") && d["content"].is_string()) {
          const std::string& piece = d["content"].get_ref<const std::string&>();
          if (!piece.empty()) {
            if (first_ns < 0) first_ns = MonoNowNs();
            s.text += piece;
          }
        }
      }
      if (c.contains("finish_reason") && c["finish_reason"].is_string()) {
        finished = true;
        finish_ns = MonoNowNs();
      }
    }
  };

  req.response_handler = [&](const httplib::Response& r) {
    status = r.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (status != 200) {
      error_body.append(data, n);
      return true;
    }
    pending.append(data, n);
    size_t pos;
    while ((pos = pending.find('\n')) != std::string::npos) {
      absl::string_view line(pending.data(), pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      handle_line(line);
      pending.erase(0, pos + 1);
    }
    return true;
  };

  httplib::Result res = client.send(req);
  if (!res) {
    s.error = absl::StrCat("HTTP: ", httplib::to_string(res.error()));
    return s;
  }
  if (res->status != 200) {
    s.error = absl::StrCat("HTTP ", res->status, ": ", error_body.substr(0, 300));
    return s;
  }
  if (!pending.empty()) handle_line(pending);
  if (!s.error.empty()) return s;
  if (!done || !finished || !saw_usage) {
    s.error = absl::StrCat("incomplete stream (done=", done, " finish=", finished,
                           " usage=", saw_usage, ")");
    return s;
  }
  if (first_ns >= 0) {
    s.ttft_s = (first_ns - start_ns) * 1e-9;
    if (s.completion_tokens >= 2 && finish_ns >= first_ns) {
      s.tpot_s = (finish_ns - first_ns) * 1e-9 / double(s.completion_tokens - 1);
    }
  }
  s.ok = true;
  return s;
}

struct PhaseResult {
  std::string name;
  double wall_s = 0;
  std::vector<Sample> samples;  // every request sent, ok or not
  int skipped = 0;              // turns not sent after a failure in their conversation
};

// Runs the whole workload once. `cache_off` adds "cache": false to every request.
PhaseResult RunPhase(const ServeBenchOptions& o, const Endpoint& ep, const std::string& model,
                     const std::string& name, const std::string& tag, bool cache_off) {
  PhaseResult pr;
  pr.name = name;
  const std::string system = SystemPrompt(tag, o.system_prompt_tokens);
  std::mutex mu;
  std::atomic<int> next_conv{0};
  std::atomic<int> errors_logged{0};

  auto worker = [&]() {
    std::unique_ptr<httplib::Client> client = ep.Connect();
    for (int conv = next_conv++; conv < o.conversations; conv = next_conv++) {
      // The user texts depend on the seed, the phase and the conversation only.
      std::mt19937_64 rng(o.seed * 1000003 + uint64_t(conv) * 7919 + (cache_off ? 0 : 1));
      json messages = json::array({{{"role", "system"}, {"content", system}}});
      for (int t = 1; t <= o.turns; ++t) {
        messages.push_back({{"role", "user"},
                            {"content", absl::StrCat("Conversation ", conv, " turn ", t, ": ",
                                                     Words(o.user_tokens, rng), "?")}});
        json request = {{"model", model},
                        {"messages", messages},
                        {"max_tokens", o.max_tokens},
                        {"temperature", 0},
                        {"stream", true},
                        {"stream_options", {{"include_usage", true}}}};
        if (cache_off) request["cache"] = false;
        Sample s = StreamChat(*client, request, t);
        const bool ok = s.ok;
        if (!ok && errors_logged++ < 5) {
          spdlog::warn("{} phase, conversation {} turn {}: {}", name, conv, t, s.error);
        }
        if (ok) messages.push_back({{"role", "assistant"}, {"content", s.text}});
        {
          std::lock_guard<std::mutex> l(mu);
          pr.samples.push_back(std::move(s));
          if (!ok) pr.skipped += o.turns - t;
        }
        if (!ok) break;
      }
    }
  };

  const int threads = std::max(1, std::min(o.concurrency, o.conversations));
  const int64_t t0 = MonoNowNs();
  {
    Progress progress("serve " + name, o.progress_s, [&] {
      std::lock_guard<std::mutex> l(mu);
      ProgressCounts c;
      for (const Sample& s : pr.samples) ++(s.ok ? c.done : c.failed);
      return c;
    });
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) pool.emplace_back(worker);
    for (std::thread& th : pool) th.join();
  }
  pr.wall_s = (MonoNowNs() - t0) * 1e-9;
  return pr;
}

// Nearest-rank percentile (q in (0, 1]); NaN for no values.
double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(q * double(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

struct PhaseStats {
  int requests = 0, ok = 0, failed = 0, skipped = 0, no_content = 0;
  double ttft_p50 = 0, ttft_p99 = 0, ttft1_p50 = 0, ttft1_p99 = 0, ttft2_p50 = 0, ttft2_p99 = 0;
  double tpot_p50 = 0, tpot_p99 = 0;
  double out_tok_s = 0, req_s = 0, hit_rate = 0, hit_rate2 = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  double wall_s = 0;
};

PhaseStats Summarize(const PhaseResult& pr) {
  PhaseStats st;
  st.wall_s = pr.wall_s;
  st.skipped = pr.skipped;
  std::vector<double> ttft, ttft1, ttft2, tpot;
  int64_t prompt2 = 0, cached2 = 0;
  for (const Sample& s : pr.samples) {
    ++st.requests;
    if (!s.ok) {
      ++st.failed;
      continue;
    }
    ++st.ok;
    st.prompt_tokens += s.prompt_tokens;
    st.completion_tokens += s.completion_tokens;
    st.cached_tokens += s.cached_tokens;
    if (s.turn >= 2) {
      prompt2 += s.prompt_tokens;
      cached2 += s.cached_tokens;
    }
    if (s.ttft_s < 0) {
      ++st.no_content;
    } else {
      ttft.push_back(s.ttft_s);
      (s.turn == 1 ? ttft1 : ttft2).push_back(s.ttft_s);
    }
    if (s.tpot_s >= 0) tpot.push_back(s.tpot_s);
  }
  st.ttft_p50 = Percentile(ttft, 0.5);
  st.ttft_p99 = Percentile(ttft, 0.99);
  st.ttft1_p50 = Percentile(ttft1, 0.5);
  st.ttft1_p99 = Percentile(ttft1, 0.99);
  st.ttft2_p50 = Percentile(ttft2, 0.5);
  st.ttft2_p99 = Percentile(ttft2, 0.99);
  st.tpot_p50 = Percentile(tpot, 0.5);
  st.tpot_p99 = Percentile(tpot, 0.99);
  if (pr.wall_s > 0) {
    st.out_tok_s = double(st.completion_tokens) / pr.wall_s;
    st.req_s = double(st.ok) / pr.wall_s;
  }
  st.hit_rate = st.prompt_tokens > 0 ? double(st.cached_tokens) / double(st.prompt_tokens) : 0;
  st.hit_rate2 = prompt2 > 0 ? double(cached2) / double(prompt2) : 0;
  return st;
}

// JSON has no NaN: empty percentiles become null.
json Num(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

json ToJson(const PhaseStats& s) {
  return {{"requests", s.requests},
          {"ok", s.ok},
          {"failed", s.failed},
          {"skipped", s.skipped},
          {"no_content", s.no_content},
          {"wall_s", s.wall_s},
          {"ttft_ms",
           {{"p50", Num(s.ttft_p50 * 1e3)},
            {"p99", Num(s.ttft_p99 * 1e3)},
            {"turn1_p50", Num(s.ttft1_p50 * 1e3)},
            {"turn1_p99", Num(s.ttft1_p99 * 1e3)},
            {"turn2plus_p50", Num(s.ttft2_p50 * 1e3)},
            {"turn2plus_p99", Num(s.ttft2_p99 * 1e3)}}},
          {"tpot_ms", {{"p50", Num(s.tpot_p50 * 1e3)}, {"p99", Num(s.tpot_p99 * 1e3)}}},
          {"output_tokens_per_s", s.out_tok_s},
          {"requests_per_s", s.req_s},
          {"prompt_tokens", s.prompt_tokens},
          {"completion_tokens", s.completion_tokens},
          {"cached_tokens", s.cached_tokens},
          {"cache_hit_rate", s.hit_rate},
          {"cache_hit_rate_turn2plus", s.hit_rate2}};
}

absl::StatusOr<std::string> ServedModel(httplib::Client& client, const std::string& url) {
  httplib::Result res = client.Get("/v1/models");
  if (!res) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the router at ", url, ": ", httplib::to_string(res.error())));
  }
  if (res->status != 200) {
    return absl::FailedPreconditionError(absl::StrCat("GET ", url, "/v1/models answered HTTP ",
                                                      res->status, ": ", res->body.substr(0, 300)));
  }
  json j = json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GET ", url, "/v1/models: no model in ", res->body.substr(0, 300)));
  }
  return j["data"][0]["id"].get<std::string>();
}

std::string Ms(double s) { return std::isnan(s) ? "-" : absl::StrFormat("%.1f", s * 1e3); }

absl::Status Run(const ServeBenchOptions& o) {
  std::string url(absl::StripSuffix(o.url, "/"));
  if (!absl::StartsWith(url, "http://") && !absl::StartsWith(url, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--url must look like http://HOST:PORT, got '", o.url, "'"));
  }
  Endpoint ep{url, o.timeout_s, o.ca_file, ""};
  if (!o.api_key_file.empty()) {
    KVTIER_ASSIGN_OR_RETURN(ep.api_key, ReadSecretFile(o.api_key_file));
  }
  std::unique_ptr<httplib::Client> probe = ep.Connect();
  if (!probe->is_valid()) return absl::InvalidArgumentError("bad --url: " + o.url);
  // Always probe: an unreachable router is an error before any workload runs.
  KVTIER_ASSIGN_OR_RETURN(std::string served, ServedModel(*probe, url));
  const std::string model = o.model.empty() ? served : o.model;

  // A random run id in the tags: no block cached by an earlier run can be hit.
  const uint64_t run_id = std::random_device{}() ^ (uint64_t(MonoNowNs()) << 20);
  const std::string run_hex = absl::StrFormat("%012x", run_id & 0xffffffffffffULL);
  spdlog::info("serve bench: {} model {}, {} conversations x {} turns, concurrency {}, run {}", url,
               model, o.conversations, o.turns, o.concurrency, run_hex);

  // Off first: any warm-up of the cluster favours the off phase, not the tier.
  PhaseResult off = RunPhase(o, ep, model, "off", absl::StrCat("run ", run_hex, " phase off"),
                             /*cache_off=*/true);
  spdlog::info("off phase: {} requests in {:.1f} s", off.samples.size(), off.wall_s);
  PhaseResult on = RunPhase(o, ep, model, "on", absl::StrCat("run ", run_hex, " phase on"),
                            /*cache_off=*/false);
  spdlog::info("on phase: {} requests in {:.1f} s", on.samples.size(), on.wall_s);
  const PhaseStats s_off = Summarize(off), s_on = Summarize(on);

  const double ratio =
      (s_on.ttft2_p50 > 0 && !std::isnan(s_on.ttft2_p50) && !std::isnan(s_off.ttft2_p50))
          ? s_off.ttft2_p50 / s_on.ttft2_p50
          : std::nan("");
  const bool target_met = !std::isnan(ratio) && ratio >= 3.0;

  auto row = [](const char* label, const std::string& a, const std::string& b) {
    std::printf("%-30s %14s %14s\n", label, a.c_str(), b.c_str());
  };
  std::printf(
      "\nkvtier-bench serve: %s, model %s, %d conversations x %d turns, concurrency %d,\n"
      "system prompt ~%d words, user ~%d words/turn, max_tokens %d\n\n",
      url.c_str(), model.c_str(), o.conversations, o.turns, o.concurrency, o.system_prompt_tokens,
      o.user_tokens, o.max_tokens);
  row("", "tier off", "tier on");
  row("requests ok / failed / skipped",
      absl::StrCat(s_off.ok, "/", s_off.failed, "/", s_off.skipped),
      absl::StrCat(s_on.ok, "/", s_on.failed, "/", s_on.skipped));
  row("TTFT p50 ms (all turns)", Ms(s_off.ttft_p50), Ms(s_on.ttft_p50));
  row("TTFT p99 ms (all turns)", Ms(s_off.ttft_p99), Ms(s_on.ttft_p99));
  row("TTFT p50 ms (turn 1)", Ms(s_off.ttft1_p50), Ms(s_on.ttft1_p50));
  row("TTFT p99 ms (turn 1)", Ms(s_off.ttft1_p99), Ms(s_on.ttft1_p99));
  row("TTFT p50 ms (turns >= 2)", Ms(s_off.ttft2_p50), Ms(s_on.ttft2_p50));
  row("TTFT p99 ms (turns >= 2)", Ms(s_off.ttft2_p99), Ms(s_on.ttft2_p99));
  row("TPOT p50 ms", Ms(s_off.tpot_p50), Ms(s_on.tpot_p50));
  row("TPOT p99 ms", Ms(s_off.tpot_p99), Ms(s_on.tpot_p99));
  row("output tokens/s", absl::StrFormat("%.1f", s_off.out_tok_s),
      absl::StrFormat("%.1f", s_on.out_tok_s));
  row("requests/s", absl::StrFormat("%.2f", s_off.req_s), absl::StrFormat("%.2f", s_on.req_s));
  row("prompt tokens (mean/request)",
      absl::StrFormat("%.0f", s_off.ok ? double(s_off.prompt_tokens) / s_off.ok : 0.0),
      absl::StrFormat("%.0f", s_on.ok ? double(s_on.prompt_tokens) / s_on.ok : 0.0));
  row("cache hit rate (all turns)", absl::StrFormat("%.1f%%", 100 * s_off.hit_rate),
      absl::StrFormat("%.1f%%", 100 * s_on.hit_rate));
  row("cache hit rate (turns >= 2)", absl::StrFormat("%.1f%%", 100 * s_off.hit_rate2),
      absl::StrFormat("%.1f%%", 100 * s_on.hit_rate2));
  row("wall s", absl::StrFormat("%.1f", s_off.wall_s), absl::StrFormat("%.1f", s_on.wall_s));
  if (s_off.no_content + s_on.no_content > 0) {
    std::printf("(%d/%d ok requests produced no content delta: no TTFT for them)\n",
                s_off.no_content, s_on.no_content);
  }
  std::printf("\nturn >= 2 TTFT p50 off/on: %s\n",
              std::isnan(ratio) ? "n/a" : absl::StrFormat("%.2fx", ratio).c_str());
  std::printf("check: turn >= 2 TTFT at least 3x lower with the tier on (CPU target): %s\n",
              target_met ? "MET" : "MISSED");
  std::printf("phases run off first, then on; run id %s in each phase's system prompt\n",
              run_hex.c_str());

  if (o.json) {
    json out = {{"benchmark", "serve"},
                {"url", url},
                {"model", model},
                {"conversations", o.conversations},
                {"turns", o.turns},
                {"system_prompt_tokens", o.system_prompt_tokens},
                {"user_tokens", o.user_tokens},
                {"max_tokens", o.max_tokens},
                {"concurrency", o.concurrency},
                {"seed", o.seed},
                {"run_id", run_hex},
                {"phase_order", json::array({"off", "on"})},
                {"off", ToJson(s_off)},
                {"on", ToJson(s_on)},
                {"ttft_turn2plus_p50_ratio_off_on", Num(ratio)},
                {"target_ratio", 3.0},
                {"target_met", target_met}};
    std::printf("%s\n", out.dump().c_str());
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

int RunServeBench(const ServeBenchOptions& options) {
  absl::Status st = Run(options);
  if (!st.ok()) {
    spdlog::error("serve bench: {}", std::string(st.message()));
    return 1;
  }
  return 0;
}

}  // namespace kvtier::bench
