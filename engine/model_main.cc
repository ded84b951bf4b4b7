// kvtier-model: make, inspect and run models with the kvtier engine.
//
//   kvtier-model init --shape tiny|tiny-qwen2|...|llama3-8b|qwen2-7b --out DIR
//                     [--seed 1] [--dtype bf16|f16|f32] [--shards 1] [--chat-format F]
//       Writes a complete Hugging Face model directory (config.json, generation_config.json,
//       safetensors with random weights of a named shape, tokenizer.json and
//       tokenizer_config.json with a byte-level BPE vocabulary and a chat template).
//   kvtier-model tokenize --model DIR (--text T | --chat-json J) [--json]
//       Token ids of a text, or of a chat (a JSON list of {role, content}) rendered with the
//       model's chat template.
//   kvtier-model info --model DIR [--memory 80GiB] [--kv-dtype bf16|fp32]
//       Architecture, parameter count, KV bytes per token and how many tokens fit in --memory.
//   kvtier-model generate --model DIR (--prompt 1,2,3 | --random-prompt N) [--backend cpu|cuda]
//                         [--max-tokens 16] [--temperature 0] [--top-k 0] [--top-p 1]
//                         [--seed 0] [--stop 2,7] [--json]
//       Runs a prompt of token ids and prints the generated ids.
//   kvtier-model dump-kv --model DIR (--prompt ... | --random-prompt N) --out FILE
//       Writes the prompt's K/V as safetensors: "layers.{i}.k" and "layers.{i}.v" of shape
//       [kv_heads, tokens, head_dim] in fp32, and "logits" of the last prompt token [vocab].
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/parse_bytes.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/testing/model_writer.h"
#include "engine/testing/tokenizer_writer.h"
#include "engine/weights.h"
#include "kvtier/block_key.h"
#include "nlohmann/json.hpp"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace kvtier::engine {
namespace {

using text::ChatFormat;

struct PromptFlags {
  std::string ids;     // "1,2,3"
  int random_len = 0;  // or a random prompt of this many tokens
  uint64_t random_seed = 1;
};

absl::StatusOr<std::vector<TokenId>> ParseIds(const std::string& text) {
  std::vector<TokenId> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    TokenId v;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("not a token id: '", part, "'"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::vector<TokenId>> MakePrompt(const PromptFlags& f, const ModelConfig& cfg) {
  if (f.random_len > 0) {
    // Ids from 3 up, so the prompt holds no bos/eos of the small presets.
    std::mt19937_64 rng(f.random_seed);
    std::uniform_int_distribution<TokenId> dist(3, cfg.vocab_size - 1);
    std::vector<TokenId> out(f.random_len);
    for (TokenId& t : out) t = dist(rng);
    return out;
  }
  KVTIER_ASSIGN_OR_RETURN(std::vector<TokenId> ids, ParseIds(f.ids));
  if (ids.empty())
    return absl::InvalidArgumentError("empty prompt: give --prompt or --random-prompt");
  return ids;
}

void AddPromptFlags(CLI::App* sub, PromptFlags& f) {
  sub->add_option("--prompt", f.ids, "prompt token ids, comma-separated");
  sub->add_option("--random-prompt", f.random_len, "use a random prompt of N tokens");
  sub->add_option("--prompt-seed", f.random_seed, "seed of --random-prompt")->capture_default_str();
}

void AddEngineFlags(CLI::App* sub, std::string& model, std::string& backend, EngineOptions& o,
                    std::string& kv_bytes) {
  sub->add_option("--model", model, "model directory")->required();
  sub->add_option("--backend", backend, "cpu | cuda")->capture_default_str();
  sub->add_option("--block-tokens", o.block_tokens, "tokens per KV page")->capture_default_str();
  sub->add_option("--kv-cache", kv_bytes, "KV cache memory, e.g. 1GiB")->capture_default_str();
  sub->add_option("--max-batch-tokens", o.max_batch_tokens, "prefill chunk size")
      ->capture_default_str();
  sub->add_option("--threads", o.num_threads, "CPU threads (0 = all)")->capture_default_str();
}

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(const std::string& model,
                                                   const std::string& backend, EngineOptions o,
                                                   const std::string& kv_bytes) {
  KVTIER_ASSIGN_OR_RETURN(o.backend, ParseBackend(backend));
  KVTIER_ASSIGN_OR_RETURN(uint64_t bytes, ParseBytes(kv_bytes));
  o.kv_cache_bytes = static_cast<int64_t>(bytes);
  return Engine::Create(model, o);
}

absl::Status RunInit(const std::string& shape, uint64_t seed, const std::string& dtype_name,
                     int shards, const std::string& chat_format, const std::string& out) {
  KVTIER_ASSIGN_OR_RETURN(ModelConfig cfg, PresetConfig(shape));
  ChatFormat format = testing::DefaultChatFormat(cfg);
  if (!chat_format.empty()) {
    KVTIER_ASSIGN_OR_RETURN(format, text::ParseChatFormat(chat_format));
  }
  // config.json names the special tokens the tokenizer holds.
  KVTIER_ASSIGN_OR_RETURN(testing::SpecialTokenIds special,
                          testing::TokenizerSpecialIds(format, cfg.vocab_size));
  cfg.bos_token_id = special.bos_id;
  cfg.eos_token_ids.assign(special.eos_ids.begin(), special.eos_ids.end());
  std::string upper = dtype_name;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  KVTIER_ASSIGN_OR_RETURN(DType dtype, ParseDType(upper));
  cfg.torch_dtype = dtype == DType::kBF16  ? "bfloat16"
                    : dtype == DType::kF16 ? "float16"
                                           : "float32";
  KVTIER_RETURN_IF_ERROR(testing::WriteRandomModel(cfg, seed, dtype, out, shards));
  KVTIER_ASSIGN_OR_RETURN(special, testing::WriteTokenizer(cfg, format, out));
  std::printf("wrote %s: %s, %.3fB parameters, %s, seed %llu, %s chat format\n", out.c_str(),
              cfg.ArchitectureName().c_str(), cfg.ParamCount() / 1e9, DTypeName(dtype),
              static_cast<unsigned long long>(seed),
              std::string(text::ChatFormatName(format)).c_str());
  return absl::OkStatus();
}

absl::Status RunInfo(const std::string& model, const std::string& memory,
                     const std::string& kv_dtype, int block_tokens, bool fingerprint) {
  KVTIER_ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfig::Load(model));
  KVTIER_ASSIGN_OR_RETURN(uint64_t mem, ParseBytes(memory));
  const int dtype_bytes = kv_dtype == "fp32" ? 4 : 2;
  const int64_t per_token = cfg.KvBytesPerToken(dtype_bytes);
  std::printf("architecture        %s\n", cfg.ArchitectureName().c_str());
  std::printf("layers              %d\n", cfg.num_layers);
  std::printf("hidden / inter      %d / %d\n", cfg.hidden_size, cfg.intermediate_size);
  std::printf("heads / kv heads    %d / %d (head_dim %d)\n", cfg.num_heads, cfg.num_kv_heads,
              cfg.head_dim);
  std::printf("vocab               %d\n", cfg.vocab_size);
  std::printf("parameters          %lld (%.3fB)\n", static_cast<long long>(cfg.ParamCount()),
              cfg.ParamCount() / 1e9);
  std::printf("kv bytes per token  %lld (%s)\n", static_cast<long long>(per_token),
              kv_dtype.c_str());
  std::printf("block bytes         %lld (%d tokens)\n",
              static_cast<long long>(per_token * block_tokens), block_tokens);
  std::printf("tokens in %s     %lld\n", memory.c_str(), static_cast<long long>(mem / per_token));
  if (fingerprint) {
    KVTIER_ASSIGN_OR_RETURN(ModelWeights w, ModelWeights::Load(model));
    std::printf("fingerprint         %s\n", KeyToHex(w.Fingerprint()).c_str());
  }
  return absl::OkStatus();
}

absl::Status RunGenerate(Engine& engine, const std::vector<TokenId>& prompt,
                         const SamplingParams& params, bool json) {
  KVTIER_RETURN_IF_ERROR(params.Validate());
  PageAllocator pages(engine.num_pages());
  Sequence seq;
  seq.tokens = prompt;
  auto out = Generate(engine, pages, seq, params);
  ReleasePages(pages, seq);
  if (!out.ok()) return out.status();
  if (json) {
    nlohmann::json j;
    j["prompt_tokens"] = prompt.size();
    j["tokens"] = *out;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(*out, ",").c_str());
  }
  return absl::OkStatus();
}

absl::Status RunDumpKv(Engine& engine, const std::vector<TokenId>& prompt,
                       const std::string& out_path) {
  const KvLayout& L = engine.kv_layout();
  const ModelConfig& cfg = engine.config();
  PageAllocator pages(engine.num_pages());
  Sequence seq;
  seq.tokens = prompt;
  std::vector<float> logits(cfg.vocab_size);
  absl::Status st = Prefill(engine, pages, seq, absl::MakeSpan(logits));
  std::vector<uint8_t> payload(seq.pages.size() * L.BlockBytes());
  if (st.ok()) st = engine.ExportPages(seq.pages, absl::MakeSpan(payload));
  ReleasePages(pages, seq);
  KVTIER_RETURN_IF_ERROR(st);

  const DType dtype = L.dtype_bytes == 4 ? DType::kF32 : DType::kBF16;
  const int T = static_cast<int>(prompt.size());
  const size_t block_elems = L.BlockBytes() / L.dtype_bytes;
  SafetensorsWriter writer;
  std::vector<float> tensor(size_t(L.num_kv_heads) * T * L.head_dim);
  std::vector<float> row(L.head_dim);
  for (int layer = 0; layer < L.num_layers; ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int h = 0; h < L.num_kv_heads; ++h) {
        for (int t = 0; t < T; ++t) {
          const size_t idx = (t / L.block_tokens) * block_elems +
                             L.PayloadIndex(layer, kv, h, t % L.block_tokens, 0);
          ConvertToFloat(dtype, payload.data() + idx * L.dtype_bytes, L.head_dim, row.data());
          std::copy(row.begin(), row.end(), tensor.begin() + (size_t(h) * T + t) * L.head_dim);
        }
      }
      KVTIER_RETURN_IF_ERROR(writer.Add(absl::StrCat("layers.", layer, kv == 0 ? ".k" : ".v"),
                                        DType::kF32, {L.num_kv_heads, T, L.head_dim}, tensor.data(),
                                        tensor.size() * sizeof(float)));
    }
  }
  KVTIER_RETURN_IF_ERROR(writer.Add("logits", DType::kF32, {cfg.vocab_size}, logits.data(),
                                    logits.size() * sizeof(float)));
  writer.SetMetadata("kv_dtype", L.dtype_name);
  writer.SetMetadata("prompt", absl::StrJoin(prompt, ","));
  KVTIER_RETURN_IF_ERROR(writer.Write(out_path));
  std::printf("wrote %s: %d layers, %d tokens, kv dtype %s\n", out_path.c_str(), L.num_layers, T,
              L.dtype_name.c_str());
  return absl::OkStatus();
}

absl::Status RunTokenize(const std::string& model, const std::string& text,
                         const std::string& chat_json, bool json) {
  KVTIER_ASSIGN_OR_RETURN(text::Tokenizer tok, text::Tokenizer::Load(model));
  std::string input = text;
  if (!chat_json.empty()) {
    nlohmann::json j = nlohmann::json::parse(chat_json, nullptr, /*allow_exceptions=*/false);
    if (!j.is_array()) return absl::InvalidArgumentError("--chat-json must be a JSON list");
    std::vector<text::ChatMessage> messages;
    for (const auto& m : j) {
      if (!m.is_object() || !m.contains("role") || !m.contains("content") ||
          !m["role"].is_string() || !m["content"].is_string()) {
        return absl::InvalidArgumentError("each message needs string role and content");
      }
      messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
    KVTIER_ASSIGN_OR_RETURN(ChatFormat format, text::DetectChatFormat(tok.chat_template()));
    KVTIER_ASSIGN_OR_RETURN(input,
                            text::RenderChat(format, messages, /*add_generation_prompt=*/true));
  }
  KVTIER_ASSIGN_OR_RETURN(std::vector<TokenId> ids, tok.Encode(input, /*allow_special=*/true));
  if (json) {
    nlohmann::json j;
    j["text"] = input;
    j["ids"] = ids;
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", absl::StrJoin(ids, ",").c_str());
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  LogToStderr();
  CLI::App app{"kvtier-model: make, inspect and run models with the kvtier engine"};
  app.require_subcommand(1);

  std::string shape = "tiny", dtype = "bf16", out;
  uint64_t seed = 1;
  int shards = 1;
  CLI::App* init = app.add_subcommand("init", "write a random model in Hugging Face format");
  init->add_option("--shape", shape, absl::StrJoin(PresetNames(), " | "))->capture_default_str();
  init->add_option("--seed", seed, "weight seed")->capture_default_str();
  init->add_option("--dtype", dtype, "bf16 | f16 | f32")->capture_default_str();
  init->add_option("--shards", shards, "safetensors files")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  init->add_option("--out", out, "model directory")->required();
  std::string chat_format;
  init->add_option("--chat-format", chat_format,
                   "llama3 | chatml (default: chatml for Qwen2, llama3 otherwise)");

  std::string model, memory = "80GiB", kv_dtype = "bf16";
  int info_block_tokens = 16;
  bool fingerprint = false;
  CLI::App* info = app.add_subcommand("info", "architecture, sizes and KV footprint");
  info->add_option("--model", model, "model directory")->required();
  info->add_option("--memory", memory, "memory to size the KV cache for")->capture_default_str();
  info->add_option("--kv-dtype", kv_dtype, "bf16 | fp32")->capture_default_str();
  info->add_option("--block-tokens", info_block_tokens, "tokens per block")->capture_default_str();
  info->add_flag("--fingerprint", fingerprint, "also hash every weight (reads the whole model)");

  std::string backend = "cpu", kv_bytes = "256MiB", stop;
  EngineOptions eo;
  PromptFlags pf;
  SamplingParams sp;
  bool json = false;
  CLI::App* gen = app.add_subcommand("generate", "run a prompt of token ids");
  AddEngineFlags(gen, model, backend, eo, kv_bytes);
  AddPromptFlags(gen, pf);
  gen->add_option("--max-tokens", sp.max_tokens, "tokens to generate")->capture_default_str();
  gen->add_option("--temperature", sp.temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", sp.top_k, "0 = off")->capture_default_str();
  gen->add_option("--top-p", sp.top_p, "1 = off")->capture_default_str();
  gen->add_option("--seed", sp.seed, "sampling seed")->capture_default_str();
  gen->add_option("--stop", stop, "stop token ids, comma-separated");
  gen->add_flag("--json", json, "print a JSON object");

  CLI::App* dump = app.add_subcommand("dump-kv", "write a prompt's K/V as safetensors");
  AddEngineFlags(dump, model, backend, eo, kv_bytes);
  AddPromptFlags(dump, pf);
  dump->add_option("--out", out, "output .safetensors file")->required();

  std::string text, chat_json;
  CLI::App* tokenize = app.add_subcommand("tokenize", "token ids of a text or a chat");
  tokenize->add_option("--model", model, "model directory")->required();
  auto* text_opt = tokenize->add_option("--text", text, "text to encode");
  tokenize->add_option("--chat-json", chat_json, "chat messages as a JSON list")
      ->excludes(text_opt);
  tokenize->add_flag("--json", json, "print a JSON object");

  CLI11_PARSE(app, argc, argv);

  absl::Status st;
  if (*init) {
    st = RunInit(shape, seed, dtype, shards, chat_format, out);
  } else if (*tokenize) {
    st = RunTokenize(model, text, chat_json, json);
  } else if (*info) {
    st = RunInfo(model, memory, kv_dtype, info_block_tokens, fingerprint);
  } else {
    auto engine = MakeEngine(model, backend, eo, kv_bytes);
    if (!engine.ok()) {
      st = engine.status();
    } else {
      auto prompt = MakePrompt(pf, (*engine)->config());
      if (!prompt.ok()) {
        st = prompt.status();
      } else if (*gen) {
        auto stops = ParseIds(stop);
        st = stops.ok() ? (sp.stop_token_ids = *stops, RunGenerate(**engine, *prompt, sp, json))
                        : stops.status();
      } else {
        st = RunDumpKv(**engine, *prompt, out);
      }
    }
  }
  if (!st.ok()) {
    std::fprintf(stderr, "kvtier-model: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kvtier::engine

int main(int argc, char** argv) { return kvtier::engine::Main(argc, argv); }
