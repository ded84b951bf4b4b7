// Streaming detokenization (docs/engine.md, "Tokenizer and chat templates"): turns a stream of
// token ids into UTF-8 text for streaming output (SSE). Each Push returns only complete
// characters and holds back the bytes of a character split across tokens; bytes that can never
// form a valid character become U+FFFD (one per maximal invalid subsequence, as Python/Rust
// lossy decoding does).
//
// A StreamDecoder borrows its Tokenizer, which must outlive it. One per output stream; not
// thread-safe (the tokenizer it reads is).
#ifndef KVTIER_TEXT_STREAM_DECODER_H_
#define KVTIER_TEXT_STREAM_DECODER_H_

#include <cstdint>
#include <string>

#include "text/tokenizer.h"

namespace kvtier::text {

class StreamDecoder {
 public:
  // With `skip_special`, special tokens produce no text.
  explicit StreamDecoder(const Tokenizer* tokenizer, bool skip_special = false);

  // Appends the token's bytes and returns the text that is now complete ("" possibly).
  std::string Push(TokenId id);
  // Ends the stream: returns held-back bytes (an incomplete character becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace kvtier::text

#endif  // KVTIER_TEXT_STREAM_DECODER_H_
