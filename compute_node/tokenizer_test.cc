// Tests of compute_node/tokenizer.h.
#include "compute_node/tokenizer.h"

#include "gtest/gtest.h"

namespace ultramem {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 260;
  c.tokenizer.special_tokens = {{"<|bos|>", 256}, {"<|eos|>", 257}};
  return c;
}

TEST(ByteTokenizerTest, RoundTripsBytes) {
  auto tok = ByteTokenizer::Create(Config());
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string text = "h\xc3\xa9llo\n\x00\xff";
  text.push_back('\0');
  auto ids = tok->Encode(text);
  ASSERT_EQ(ids.size(), text.size());
  EXPECT_EQ(ids[1], 0xc3);
  EXPECT_EQ(tok->Decode(ids), text);
}

TEST(ByteTokenizerTest, SpecialTokens) {
  auto tok = ByteTokenizer::Create(Config());
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->bos(), 256);
  EXPECT_EQ(tok->eos(), 257);
  EXPECT_FALSE(tok->Special("<|user|>").has_value());
  EXPECT_EQ(tok->Decode({104, 256, 105}), "hi");
  EXPECT_EQ(tok->Decode({104, 256, 105}, /*render_special=*/true), "h<|bos|>i");
  // Special-token text typed by a user stays plain bytes.
  EXPECT_EQ(tok->Encode("<|eos|>").size(), 7u);
}

TEST(ByteTokenizerTest, RefusesBadConfig) {
  ModelConfig c = Config();
  c.tokenizer.special_tokens["<|x|>"] = 300;
  EXPECT_EQ(ByteTokenizer::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
  c = Config();
  c.tokenizer.type = "bpe";
  EXPECT_EQ(ByteTokenizer::Create(c).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ultramem
