#include "deploy/chat.h"

#include <httplib.h>

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace kvtier::deploy {
namespace {

using nlohmann::json;

// "http://h:p/v1" -> "http://h:p".
std::string BaseUrl(std::string url) {
  while (absl::EndsWith(url, "/")) url.pop_back();
  absl::string_view v(url);
  absl::ConsumeSuffix(&v, "/v1");
  return std::string(v);
}

std::unique_ptr<httplib::Client> MakeClient(const ChatOptions& o) {
  auto cli = std::make_unique<httplib::Client>(BaseUrl(o.url));
  if (!o.ca_file.empty()) cli->set_ca_cert_path(o.ca_file);
  cli->enable_server_certificate_verification(true);
  if (!o.api_key.empty()) cli->set_bearer_token_auth(o.api_key);
  cli->set_connection_timeout(5, 0);
  cli->set_read_timeout(o.timeout_s, 0);
  cli->set_write_timeout(o.timeout_s, 0);
  return cli;
}

absl::StatusOr<std::string> ServedModel(httplib::Client& cli) {
  httplib::Result r = cli.Get("/v1/models");
  if (!r) return absl::UnavailableError("GET /v1/models: " + httplib::to_string(r.error()));
  json j = json::parse(r->body, nullptr, false);
  if (r->status != 200 || j.is_discarded() || !j.contains("data") || j["data"].empty() ||
      !j["data"][0].contains("id")) {
    return absl::UnavailableError(absl::StrCat("GET /v1/models: ", r->status, " ", r->body));
  }
  return j["data"][0]["id"].get<std::string>();
}

// One streamed request; fills `stats`.
absl::Status StreamTurn(httplib::Client& cli, const ChatOptions& o, const std::string& model,
                        const json& messages, std::ostream& out, TurnStats* stats) {
  json body = {{"model", model},
               {"messages", messages},
               {"max_tokens", o.max_tokens},
               {"temperature", o.temperature},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!o.cache) body["cache"] = false;

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.set_header("Accept", "text/event-stream");
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  int status = 0;
  std::string buffer, raw, error;
  bool done = false;
  absl::Time first, last;
  const absl::Time t0 = absl::Now();
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  auto handle_event = [&](const std::string& event) {
    for (absl::string_view line : absl::StrSplit(event, '\n')) {
      if (!absl::ConsumePrefix(&line, "data: ")) continue;
      if (line == "[DONE]") {
        done = true;
        continue;
      }
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        error = j["error"].value("message", j["error"].dump());
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        const json& u = j["usage"];
        stats->prompt_tokens = u.value("prompt_tokens", int64_t{0});
        stats->completion_tokens = u.value("completion_tokens", int64_t{0});
        if (u.contains("prompt_tokens_details") && u["prompt_tokens_details"].is_object()) {
          stats->cached_tokens = u["prompt_tokens_details"].value("cached_tokens", int64_t{0});
        }
      }
      if (!j.contains("choices")) continue;
      for (const json& c : j["choices"]) {
        if (!c.contains("delta") || !c["delta"].contains("content") ||
            !c["delta"]["content"].is_string()) {
          continue;
        }
        const std::string piece = c["delta"]["content"].get<std::string>();
        if (piece.empty()) continue;
        const absl::Time now = absl::Now();
        if (stats->reply.empty()) first = now;
        last = now;
        stats->reply += piece;
        out << piece << std::flush;
      }
    }
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (status != 200) {
      raw.append(data, n);
      return true;
    }
    buffer.append(data, n);
    size_t pos;
    while ((pos = buffer.find("\n\n")) != std::string::npos) {
      std::string event = buffer.substr(0, pos);
      buffer.erase(0, pos + 2);
      handle_event(event);
    }
    return true;
  };
  httplib::Result r = cli.send(req);
  const absl::Time end = absl::Now();
  if (!r)
    return absl::UnavailableError("POST /v1/chat/completions: " + httplib::to_string(r.error()));
  if (status != 200) {
    return absl::UnavailableError(
        absl::StrCat("POST /v1/chat/completions: HTTP ", status, ": ", raw));
  }
  if (!error.empty()) return absl::InternalError("stream error: " + error);
  if (!done) return absl::DataLossError("the stream ended without [DONE]");
  if (!stats->reply.empty()) {
    stats->ttft_ms = absl::ToDoubleMilliseconds(first - t0);
    const double gen_s = absl::ToDoubleSeconds(last - first);
    stats->tokens_per_s = stats->completion_tokens > 1 && gen_s > 0
                              ? (stats->completion_tokens - 1) / gen_s
                              : stats->completion_tokens / absl::ToDoubleSeconds(end - t0);
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& BuiltinUserMessages() {
  static const auto* const kMessages = new std::vector<std::string>{
      "Hello! What does a KV-cache tier do in an LLM serving system?",
      "Why does a multi-turn conversation benefit from it?",
      "How are the cached blocks keyed, and what happens when the prefix changes?",
      "What happens to cached blocks when the store runs out of memory?",
      "Summarize our conversation in one sentence.",
      "Which part of a request still has to be computed on every turn?",
      "How would you measure whether the cache helps?",
      "Thank you, that is all for today.",
  };
  return *kMessages;
}

absl::StatusOr<std::vector<TurnStats>> RunChat(const ChatOptions& o, std::istream& in,
                                               std::ostream& out) {
  if (o.url.empty()) return absl::InvalidArgumentError("--url is required");
  if (o.max_tokens < 1) return absl::InvalidArgumentError("--max-tokens must be >= 1");
  if (o.turns < 0) return absl::InvalidArgumentError("--turns must be >= 0");
  std::vector<std::string> script;
  if (!o.script.empty()) {
    std::ifstream f(o.script);
    if (!f) return absl::NotFoundError("cannot read script " + o.script);
    std::string line;
    while (std::getline(f, line)) {
      std::string t(absl::StripAsciiWhitespace(line));
      if (!t.empty()) script.push_back(t);
    }
    if (o.turns > 0 && static_cast<size_t>(o.turns) < script.size()) script.resize(o.turns);
  } else if (o.turns > 0) {
    const auto& builtin = BuiltinUserMessages();
    for (int i = 0; i < o.turns; ++i) script.push_back(builtin[i % builtin.size()]);
  }
  const bool interactive = o.script.empty() && o.turns == 0;

  std::unique_ptr<httplib::Client> cli = MakeClient(o);
  std::string model = o.model;
  if (model.empty()) {
    auto m = ServedModel(*cli);
    if (!m.ok()) return m.status();
    model = *m;
  }
  out << "model " << model << " at " << BaseUrl(o.url) << "/v1, cache " << (o.cache ? "on" : "off")
      << ", max_tokens " << o.max_tokens << "\n";
  if (interactive) out << "type a message per line; an empty line or EOF ends\n";

  json messages = json::array();
  if (!o.system.empty()) messages.push_back({{"role", "system"}, {"content", o.system}});
  std::vector<TurnStats> turns;
  for (size_t turn = 1;; ++turn) {
    std::string user;
    if (interactive) {
      out << "> " << std::flush;
      if (!std::getline(in, user) || absl::StripAsciiWhitespace(user).empty()) break;
    } else {
      if (turn > script.size()) break;
      user = script[turn - 1];
      out << "\n[turn " << turn << "] user: " << user << "\n";
    }
    messages.push_back({{"role", "user"}, {"content", user}});
    out << "[turn " << turn << "] assistant: " << std::flush;
    TurnStats stats;
    absl::Status s = StreamTurn(*cli, o, model, messages, out, &stats);
    out << "\n";
    if (!s.ok()) return s;
    messages.push_back({{"role", "assistant"}, {"content", stats.reply}});
    out << absl::StrFormat(
        "[turn %d] ttft_ms=%.1f tokens_per_s=%.1f prompt_tokens=%d cached=%d computed=%d "
        "completion_tokens=%d\n",
        turn, stats.ttft_ms, stats.tokens_per_s, stats.prompt_tokens, stats.cached_tokens,
        stats.prompt_tokens - stats.cached_tokens, stats.completion_tokens);
    turns.push_back(std::move(stats));
  }
  if (!turns.empty()) {
    int64_t prompt = 0, cached = 0;
    double ttft = 0;
    for (const TurnStats& t : turns) {
      prompt += t.prompt_tokens;
      cached += t.cached_tokens;
      ttft += t.ttft_ms;
    }
    out << absl::StrFormat(
        "summary: %d turns, %d prompt tokens, %d cached (%.0f%%), mean ttft %.1f ms\n",
        turns.size(), prompt, cached, prompt > 0 ? 100.0 * cached / prompt : 0.0,
        ttft / turns.size());
  }
  return turns;
}

}  // namespace kvtier::deploy
