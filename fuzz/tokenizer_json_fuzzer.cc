// libFuzzer target: Hugging Face tokenizer files (text/tokenizer.h), as found in any model
// directory the router or a worker is pointed at. The input is tokenizer.json, then optionally a
// NUL byte and tokenizer_config.json. A tokenizer that loads must encode and decode a text made
// of its own input without failing, every id below vocab_size.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fuzz/fuzz_util.h"
#include "text/tokenizer.h"

namespace kvtier::text {
namespace {

void Check(const uint8_t* data, size_t size) {
  const absl::string_view input = fuzz::AsText(data, size);
  const size_t nul = input.find('\0');
  const absl::string_view json = input.substr(0, nul);
  const absl::string_view config =
      nul == absl::string_view::npos ? absl::string_view() : input.substr(nul + 1);
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(json, config);
  if (!tok.ok()) {
    if (tok.status().message().empty()) std::abort();
    return;
  }
  const absl::string_view text = input.substr(0, 256);
  for (bool allow_special : {false, true}) {
    absl::StatusOr<std::vector<TokenId>> ids = tok->Encode(text, allow_special);
    if (!ids.ok()) continue;  // the regex engine's limits
    for (TokenId id : *ids) {
      if (id < 0 || id >= tok->vocab_size()) std::abort();
    }
    tok->Decode(*ids);
  }
}

}  // namespace
}  // namespace kvtier::text

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kvtier::text::Check(data, size);
  return 0;
}
