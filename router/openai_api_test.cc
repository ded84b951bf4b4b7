#include "router/openai_api.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvtier::router {
namespace {

using nlohmann::json;

// Parses `body`, expecting an error; returns it.
ApiError Bad(Endpoint e, const std::string& body) {
  ApiError err;
  std::optional<ApiRequest> r = ParseRequest(e, body, &err);
  EXPECT_FALSE(r.has_value()) << body;
  return err;
}

ApiRequest Good(Endpoint e, const std::string& body) {
  ApiError err;
  std::optional<ApiRequest> r = ParseRequest(e, body, &err);
  EXPECT_TRUE(r.has_value()) << body << ": " << err.message;
  return r.value_or(ApiRequest{});
}

TEST(OpenAiApiTest, CompletionPromptForms) {
  ApiRequest r = Good(Endpoint::kCompletions, R"({"model":"m","prompt":"hi"})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "hi");
  EXPECT_EQ(r.max_tokens, std::nullopt);
  EXPECT_EQ(r.n, 1);
  EXPECT_TRUE(r.cache);
  r = Good(Endpoint::kCompletions, R"({"model":"m","prompt":["a","b"]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].text, "b");
  r = Good(Endpoint::kCompletions, R"({"model":"m","prompt":[1,2,3]})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_FALSE(r.prompts[0].text.has_value());
  EXPECT_THAT(r.prompts[0].token_ids, ::testing::ElementsAre(1, 2, 3));
  r = Good(Endpoint::kCompletions, R"({"model":"m","prompt":[[1],[2,3]]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_THAT(r.prompts[1].token_ids, ::testing::ElementsAre(2, 3));
}

TEST(OpenAiApiTest, ParametersAndExtensions) {
  ApiRequest r = Good(Endpoint::kCompletions,
                      R"({"model":"m","prompt":"x","max_tokens":7,"temperature":0,"top_p":0.5,
                          "top_k":3,"seed":9,"stop":"\n","n":2,"stream":true,
                          "stream_options":{"include_usage":true},"user":"u","cache":false})");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, 0.5f);
  EXPECT_EQ(r.top_k, 3);
  EXPECT_EQ(r.seed, 9u);
  EXPECT_THAT(r.stop, ::testing::ElementsAre("\n"));
  EXPECT_EQ(r.n, 2);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FALSE(r.cache);
  r = Good(Endpoint::kChat,
           R"({"model":"m","messages":[{"role":"system","content":"s"},
               {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
               "max_completion_tokens":5,"stop":["x","yz"]})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].role, "user");
  EXPECT_EQ(r.messages[1].content, "ab");
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_THAT(r.stop, ::testing::ElementsAre("x", "yz"));
}

TEST(OpenAiApiTest, ErrorsAre400WithParam) {
  struct Case {
    Endpoint e;
    const char* body;
    const char* param;  // "" = null
  };
  const Case cases[] = {
      {Endpoint::kChat, "{not json", ""},
      {Endpoint::kChat, "[1,2]", ""},
      {Endpoint::kChat, R"({"messages":[{"role":"user","content":"x"}]})", "model"},
      {Endpoint::kChat, R"({"model":"m"})", "messages"},
      {Endpoint::kChat, R"({"model":"m","messages":[]})", "messages"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"tool","content":"x"}]})",
       "messages[0].role"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user"}]})", "messages[0].content"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":[{"type":"image"}]}]})",
       "messages[0].content"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1})", "max_tokens"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":-5})",
       "max_completion_tokens"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"7"})",
       "max_tokens"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user","content":"x"}],"n":0})", "n"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3})",
       "temperature"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0})",
       "top_p"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user","content":"x"}],"stop":[""]})",
       "stop"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user","content":"x"}],"stop":5})",
       "stop"},
      {Endpoint::kChat,
       R"({"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"})", "stream"},
      {Endpoint::kChat, R"({"model":"m","messages":[{"role":"user","content":"x"}],"cache":1})",
       "cache"},
      {Endpoint::kCompletions, R"({"model":"m"})", "prompt"},
      {Endpoint::kCompletions, R"({"model":"m","prompt":[]})", "prompt"},
      {Endpoint::kCompletions, R"({"model":"m","prompt":[1,-2]})", "prompt"},
      {Endpoint::kCompletions, R"({"model":"m","prompt":[[]]})", "prompt"},
      {Endpoint::kCompletions, R"({"model":"m","prompt":{"a":1}})", "prompt"},
      {Endpoint::kCompletions, R"({"model":5,"prompt":"x"})", "model"},
  };
  for (const Case& c : cases) {
    ApiError err = Bad(c.e, c.body);
    EXPECT_EQ(err.http_status, 400) << c.body;
    EXPECT_EQ(err.type, "invalid_request_error") << c.body;
    EXPECT_EQ(err.param, c.param) << c.body;
    EXPECT_FALSE(err.message.empty()) << c.body;
    const json body = json::parse(ErrorBody(err));
    EXPECT_EQ(body["error"]["type"], "invalid_request_error");
    EXPECT_EQ(body["error"]["message"], err.message);
    if (std::string(c.param).empty()) {
      EXPECT_TRUE(body["error"]["param"].is_null());
    } else {
      EXPECT_EQ(body["error"]["param"], c.param);
    }
    EXPECT_TRUE(body["error"]["code"].is_null());
  }
}

TEST(OpenAiApiTest, ErrorBodyExact) {
  ApiError e = InvalidRequest("bad", "model");
  e.http_status = 404;
  e.code = "model_not_found";
  EXPECT_EQ(ErrorBody(e), R"({"error":{"code":"model_not_found","message":"bad","param":"model",)"
                          R"("type":"invalid_request_error"}})");
  EXPECT_EQ(ErrorBody(ServerError(503, "down")),
            R"({"error":{"code":null,"message":"down","param":null,"type":"server_error"}})");
}

TEST(OpenAiApiTest, SseChunksExact) {
  EXPECT_EQ(SseDone(), "data: [DONE]\n\n");
  EXPECT_EQ(SseEvent("{}"), "data: {}\n\n");
  EXPECT_EQ(SseEvent(ChunkJson(Endpoint::kChat, "chatcmpl-1", 7, "m", 0, true, "", "")),
            "data: {\"choices\":[{\"delta\":{\"content\":\"\",\"role\":\"assistant\"},\"finish_"
            "reason\":null,\"index\":0,\"logprobs\":null}],\"created\":7,\"id\":\"chatcmpl-1\","
            "\"model\":\"m\",\"object\":\"chat.completion.chunk\"}\n\n");
  EXPECT_EQ(ChunkJson(Endpoint::kChat, "c", 7, "m", 1, false, "h\xC3\xA9\n", ""),
            "{\"choices\":[{\"delta\":{\"content\":\"h\xC3\xA9\\n\"},\"finish_reason\":null,"
            "\"index\":1,\"logprobs\":null}],\"created\":7,\"id\":\"c\",\"model\":\"m\","
            "\"object\":\"chat.completion.chunk\"}");
  EXPECT_EQ(ChunkJson(Endpoint::kChat, "c", 7, "m", 0, false, "", "stop"),
            "{\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0,\"logprobs\":"
            "null}],\"created\":7,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion."
            "chunk\"}");
  EXPECT_EQ(ChunkJson(Endpoint::kCompletions, "c", 7, "m", 0, false, "x", ""),
            "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"logprobs\":null,\"text\":\"x\"}],"
            "\"created\":7,\"id\":\"c\",\"model\":\"m\",\"object\":\"text_completion\"}");
  Usage u{10, 3, 8};
  const json usage = json::parse(UsageChunkJson(Endpoint::kChat, "c", 7, "m", u));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 13);
  EXPECT_EQ(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
}

TEST(OpenAiApiTest, ResponseBodies) {
  Usage u{10, 3, 8};
  json chat = json::parse(ResponseBody(Endpoint::kChat, "id", 1, "m", {{0, "hi", "stop"}}, u));
  EXPECT_EQ(chat["object"], "chat.completion");
  EXPECT_EQ(chat["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(chat["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(chat["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(chat["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(chat["usage"]["completion_tokens"], 3);
  EXPECT_EQ(chat["usage"]["total_tokens"], 13);
  EXPECT_EQ(chat["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
  json cmpl =
      json::parse(ResponseBody(Endpoint::kCompletions, "id", 1, "m", {{0, "a", "length"}}, u));
  EXPECT_EQ(cmpl["object"], "text_completion");
  EXPECT_EQ(cmpl["choices"][0]["text"], "a");
  json models = json::parse(ModelsBody("m", 5));
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "m");
  EXPECT_EQ(ModelBody("m", 5), R"({"created":5,"id":"m","object":"model","owned_by":"kvtier"})");
  EXPECT_EQ(models["data"][0], json::parse(ModelBody("m", 5)));
}

}  // namespace
}  // namespace kvtier::router
