#include "router/openai_api.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace kvtier::router {
namespace {

using Json = nlohmann::json;

std::string Dump(const Json& j) {
  // Invalid UTF-8 never reaches here (StreamDecoder output is valid), but never throw.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json NullIfEmpty(const std::string& s) { return s.empty() ? Json(nullptr) : Json(s); }

// Reads optional fields with type checks; the first error is kept.
class Reader {
 public:
  Reader(const Json& obj, ApiError* error) : obj_(obj), error_(error) {}
  bool failed() const { return failed_; }
  bool Fail(std::string message, const std::string& param) {
    if (!failed_) *error_ = InvalidRequest(std::move(message), param);
    failed_ = true;
    return false;
  }
  const Json* Get(const char* key) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  void Number(const char* key, float* out) {
    const Json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_number()) {
      Fail(absl::StrCat("'", key, "' must be a number"), key);
      return;
    }
    *out = v->get<float>();
  }
  void Integer(const char* key, std::optional<int64_t>* out) {
    const Json* v = Get(key);
    if (v == nullptr) return;
    if (v->is_number_integer()) {
      *out = v->get<int64_t>();
    } else if (v->is_number_float() && std::trunc(v->get<double>()) == v->get<double>() &&
               std::fabs(v->get<double>()) < 9e15) {
      *out = static_cast<int64_t>(v->get<double>());
    } else {
      Fail(absl::StrCat("'", key, "' must be an integer"), key);
    }
  }
  void Bool(const char* key, bool* out) {
    const Json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) {
      Fail(absl::StrCat("'", key, "' must be a boolean"), key);
      return;
    }
    *out = v->get<bool>();
  }

 private:
  const Json& obj_;
  ApiError* error_;
  bool failed_ = false;
};

bool ParseTokenArray(const Json& arr, std::vector<TokenId>* out, Reader* r) {
  for (const Json& t : arr) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 ||
        t.get<int64_t>() > std::numeric_limits<TokenId>::max()) {
      return r->Fail("'prompt' token ids must be non-negative integers", "prompt");
    }
    out->push_back(static_cast<TokenId>(t.get<int64_t>()));
  }
  if (out->empty()) return r->Fail("'prompt' must not be empty", "prompt");
  return true;
}

void ParsePrompts(const Json* p, ApiRequest* req, Reader* r) {
  if (p == nullptr) {
    r->Fail("'prompt' is required", "prompt");
    return;
  }
  if (p->is_string()) {
    req->prompts.push_back({p->get<std::string>(), {}});
    return;
  }
  if (!p->is_array() || p->empty()) {
    r->Fail(
        "'prompt' must be a string, an array of strings, an array of token ids or an "
        "array of token id arrays, and not empty",
        "prompt");
    return;
  }
  if ((*p)[0].is_number()) {
    Prompt one;
    if (ParseTokenArray(*p, &one.token_ids, r)) req->prompts.push_back(std::move(one));
    return;
  }
  for (const Json& e : *p) {
    if (e.is_string()) {
      req->prompts.push_back({e.get<std::string>(), {}});
    } else if (e.is_array()) {
      Prompt one;
      if (!ParseTokenArray(e, &one.token_ids, r)) return;
      req->prompts.push_back(std::move(one));
    } else {
      r->Fail("'prompt' array elements must be strings or token id arrays", "prompt");
      return;
    }
  }
}

void ParseMessages(const Json* m, ApiRequest* req, Reader* r) {
  if (m == nullptr) {
    r->Fail("'messages' is required", "messages");
    return;
  }
  if (!m->is_array() || m->empty()) {
    r->Fail("'messages' must be a non-empty array", "messages");
    return;
  }
  for (size_t i = 0; i < m->size(); ++i) {
    const Json& msg = (*m)[i];
    const std::string param = absl::StrCat("messages[", i, "]");
    if (!msg.is_object()) {
      r->Fail(absl::StrCat("'", param, "' must be an object"), param);
      return;
    }
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) {
      r->Fail(absl::StrCat("'", param, ".role' is required and must be a string"), param + ".role");
      return;
    }
    text::ChatMessage out;
    out.role = role->get<std::string>();
    if (out.role != "system" && out.role != "user" && out.role != "assistant") {
      r->Fail(absl::StrCat("'", param, ".role' must be system, user or assistant, got '", out.role,
                           "'"),
              param + ".role");
      return;
    }
    auto content = msg.find("content");
    if (content == msg.end() || content->is_null()) {
      // An assistant message may carry no content (e.g. tool calls, which are not served).
      if (out.role != "assistant") {
        r->Fail(absl::StrCat("'", param, ".content' is required"), param + ".content");
        return;
      }
    } else if (content->is_string()) {
      out.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const Json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto text = part.is_object() ? part.find("text") : part.end();
        if (!part.is_object() || type == part.end() || *type != "text" || text == part.end() ||
            !text->is_string()) {
          r->Fail(absl::StrCat("'", param,
                               ".content' parts must be {\"type\": \"text\", \"text\": string}"),
                  param + ".content");
          return;
        }
        out.content += text->get<std::string>();
      }
    } else {
      r->Fail(absl::StrCat("'", param, ".content' must be a string or an array of text parts"),
              param + ".content");
      return;
    }
    req->messages.push_back(std::move(out));
  }
}

}  // namespace

ApiError InvalidRequest(std::string message, std::string param) {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

ApiError ServerError(int http_status, std::string message) {
  ApiError e;
  e.http_status = http_status;
  e.message = std::move(message);
  e.type = "server_error";
  return e;
}

std::string ErrorBody(const ApiError& error) {
  Json j = {{"error",
             {{"message", error.message},
              {"type", error.type},
              {"param", NullIfEmpty(error.param)},
              {"code", NullIfEmpty(error.code)}}}};
  return Dump(j);
}

std::optional<ApiRequest> ParseRequest(Endpoint endpoint, absl::string_view body, ApiError* error) {
  Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    *error = InvalidRequest("the request body is not valid JSON");
    return std::nullopt;
  }
  if (!j.is_object()) {
    *error = InvalidRequest("the request body must be a JSON object");
    return std::nullopt;
  }
  try {
    ApiRequest req;
    req.endpoint = endpoint;
    Reader r(j, error);
    const Json* model = r.Get("model");
    if (model == nullptr || !model->is_string()) {
      *error = InvalidRequest("'model' is required and must be a string", "model");
      return std::nullopt;
    }
    req.model = model->get<std::string>();
    if (endpoint == Endpoint::kCompletions) {
      ParsePrompts(r.Get("prompt"), &req, &r);
    } else {
      ParseMessages(r.Get("messages"), &req, &r);
    }
    for (const char* key : {"max_tokens", "max_completion_tokens"}) {
      std::optional<int64_t> v;
      r.Integer(key, &v);
      if (v.has_value()) {
        if (*v < 0) {
          r.Fail(absl::StrCat("'", key, "' must be >= 0, got ", *v), key);
        }
        req.max_tokens = *v;
      }
    }
    r.Number("temperature", &req.temperature);
    if (!r.failed() && !(req.temperature >= 0.0f && req.temperature <= 2.0f)) {
      r.Fail("'temperature' must be in [0, 2]", "temperature");
    }
    r.Number("top_p", &req.top_p);
    if (!r.failed() && !(req.top_p > 0.0f && req.top_p <= 1.0f)) {
      r.Fail("'top_p' must be in (0, 1]", "top_p");
    }
    std::optional<int64_t> top_k;
    r.Integer("top_k", &top_k);
    if (top_k.has_value()) {
      // -1 means "off" in vLLM; accept it.
      if (*top_k < -1 || *top_k > std::numeric_limits<int32_t>::max()) {
        r.Fail("'top_k' must be >= 0 (or -1: off)", "top_k");
      }
      req.top_k = *top_k < 0 ? 0 : static_cast<int32_t>(*top_k);
    }
    std::optional<int64_t> seed;
    r.Integer("seed", &seed);
    if (seed.has_value()) req.seed = static_cast<uint64_t>(*seed);
    std::optional<int64_t> n;
    r.Integer("n", &n);
    if (n.has_value()) {
      if (*n < 1 || *n > kMaxN) r.Fail(absl::StrCat("'n' must be in [1, ", kMaxN, "]"), "n");
      req.n = static_cast<int>(*n);
    }
    if (const Json* stop = r.Get("stop"); stop != nullptr) {
      if (stop->is_string()) {
        req.stop.push_back(stop->get<std::string>());
      } else if (stop->is_array()) {
        for (const Json& s : *stop) {
          if (!s.is_string()) {
            r.Fail("'stop' must be a string or an array of strings", "stop");
            break;
          }
          req.stop.push_back(s.get<std::string>());
        }
      } else {
        r.Fail("'stop' must be a string or an array of strings", "stop");
      }
      for (const std::string& s : req.stop) {
        if (s.empty()) r.Fail("'stop' sequences must not be empty", "stop");
      }
      if (req.stop.size() > kMaxStopSequences) {
        r.Fail(absl::StrCat("'stop' holds at most ", kMaxStopSequences, " sequences"), "stop");
      }
    }
    r.Bool("stream", &req.stream);
    if (const Json* so = r.Get("stream_options"); so != nullptr) {
      if (!so->is_object()) {
        r.Fail("'stream_options' must be an object", "stream_options");
      } else {
        Reader sr(*so, error);
        sr.Bool("include_usage", &req.include_usage);
        if (sr.failed()) return std::nullopt;
      }
    }
    r.Bool("cache", &req.cache);
    if (const Json* user = r.Get("user"); user != nullptr && !user->is_string()) {
      r.Fail("'user' must be a string", "user");
    }
    if (r.failed()) return std::nullopt;
    return req;
  } catch (const Json::exception& e) {
    *error = InvalidRequest(absl::StrCat("bad request: ", e.what()));
    return std::nullopt;
  }
}

std::string ResponseBody(Endpoint endpoint, const std::string& id, int64_t created,
                         const std::string& model, const std::vector<Choice>& choices,
                         const Usage& usage) {
  Json cs = Json::array();
  for (const Choice& c : choices) {
    Json one = {{"index", c.index}};
    if (endpoint == Endpoint::kCompletions) {
      one["text"] = c.text;
    } else {
      one["message"] = {{"role", "assistant"}, {"content", c.text}};
    }
    one["logprobs"] = nullptr;
    one["finish_reason"] = NullIfEmpty(c.finish_reason);
    cs.push_back(std::move(one));
  }
  Json j = {{"id", id},
            {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion"},
            {"created", created},
            {"model", model},
            {"choices", std::move(cs)},
            {"usage",
             {{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}}}};
  return Dump(j);
}

std::string SseEvent(absl::string_view json) { return absl::StrCat("data: ", json, "\n\n"); }

std::string SseDone() { return "data: [DONE]\n\n"; }

std::string ChunkJson(Endpoint endpoint, const std::string& id, int64_t created,
                      const std::string& model, int index, bool role, absl::string_view text,
                      absl::string_view finish_reason) {
  Json choice = {{"index", index}};
  if (endpoint == Endpoint::kCompletions) {
    choice["text"] = std::string(text);
  } else {
    Json delta = Json::object();
    if (role) delta["role"] = "assistant";
    // OpenAI's first chunk is {"role":"assistant","content":""}, its last an empty delta.
    if (role || !text.empty() || finish_reason.empty()) delta["content"] = std::string(text);
    choice["delta"] = std::move(delta);
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] =
      finish_reason.empty() ? Json(nullptr) : Json(std::string(finish_reason));
  Json j = {
      {"id", id},
      {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", created},
      {"model", model},
      {"choices", Json::array({std::move(choice)})}};
  return Dump(j);
}

std::string UsageChunkJson(Endpoint endpoint, const std::string& id, int64_t created,
                           const std::string& model, const Usage& usage) {
  Json j = {
      {"id", id},
      {"object", endpoint == Endpoint::kCompletions ? "text_completion" : "chat.completion.chunk"},
      {"created", created},
      {"model", model},
      {"choices", Json::array()},
      {"usage",
       {{"prompt_tokens", usage.prompt_tokens},
        {"completion_tokens", usage.completion_tokens},
        {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
        {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}}}};
  return Dump(j);
}

namespace {

Json ModelJson(const std::string& model, int64_t created) {
  return {{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "kvtier"}};
}

}  // namespace

std::string ModelBody(const std::string& model, int64_t created) {
  return Dump(ModelJson(model, created));
}

std::string ModelsBody(const std::string& model, int64_t created) {
  return Dump({{"object", "list"}, {"data", Json::array({ModelJson(model, created)})}});
}

}  // namespace kvtier::router
