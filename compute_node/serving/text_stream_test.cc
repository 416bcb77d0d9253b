// Tests of compute_node/serving/text_stream.h.
#include "compute_node/serving/text_stream.h"

#include "gtest/gtest.h"

namespace ultramem {
namespace {

std::string PushAll(TextStream& s, const std::string& bytes, bool* stopped) {
  std::string out;
  for (char c : bytes) {
    out += s.Push(std::string(1, c), stopped);
    if (*stopped) break;
  }
  return out;
}

TEST(TextStreamTest, HoldsIncompleteUtf8) {
  TextStream s({});
  bool stopped = false;
  EXPECT_EQ(s.Push("h\xc3", &stopped), "h");
  EXPECT_EQ(s.Push("\xa9", &stopped), "\xc3\xa9");
  EXPECT_EQ(s.Push("\xe2\x82", &stopped), "");
  EXPECT_EQ(s.Push("\xac!", &stopped), "\xe2\x82\xac!");
  EXPECT_FALSE(stopped);
}

TEST(TextStreamTest, InvalidBytesBecomeReplacement) {
  TextStream s({});
  bool stopped = false;
  EXPECT_EQ(s.Push("a\xff" "b", &stopped), "a\xef\xbf\xbd" "b");
  EXPECT_EQ(s.Push("\xc3" "x", &stopped), "\xef\xbf\xbd" "x");  // broken sequence
  EXPECT_EQ(s.Push("\xe2", &stopped), "");
  EXPECT_EQ(s.Flush(), "\xef\xbf\xbd");  // incomplete at the end
}

TEST(TextStreamTest, StopStringCutsAndHoldsPrefixes) {
  TextStream s({"\n\nUser:", "END"});
  bool stopped = false;
  std::string out = PushAll(s, "Hello\n\nUse", &stopped);
  EXPECT_EQ(out, "Hello");  // "\n\nUse" may begin a stop string: held back
  EXPECT_FALSE(stopped);
  out += PushAll(s, "r: more", &stopped);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "Hello");
  EXPECT_EQ(s.Flush(), "");
}

TEST(TextStreamTest, HeldPrefixReleasedWhenItDiverges) {
  TextStream s({"END"});
  bool stopped = false;
  std::string out = PushAll(s, "THE EN", &stopped);
  EXPECT_EQ(out, "THE ");
  out += PushAll(s, "D", &stopped);
  EXPECT_TRUE(stopped);
  EXPECT_EQ(out, "THE ");
  TextStream t({"END"});
  stopped = false;
  out = PushAll(t, "ENTRY", &stopped);
  EXPECT_FALSE(stopped);
  EXPECT_EQ(out + t.Flush(), "ENTRY");
}

}  // namespace
}  // namespace ultramem
