#include "text/stream_decoder.h"

#include "text/utf8.h"

namespace kvtier::text {

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::Push(TokenId id) {
  pending_ += tokenizer_->Decode({id}, skip_special_);
  std::string out;
  pending_.erase(0, AppendUtf8Lossy(pending_, /*hold_back_cut=*/true, &out));
  return out;
}

std::string StreamDecoder::Flush() {
  std::string out = Utf8Lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace kvtier::text
