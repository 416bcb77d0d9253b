// Unit tests of services/request_checks.h: the token comparison and the header forms.
#include "services/request_checks.h"

#include <gtest/gtest.h>

namespace ultramem::services {
namespace {

TEST(ConstantTimeEqualsTest, ComparesContentAndLength) {
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", ""));
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("a\0", 2), "a"));
}

TEST(CheckBearerTokenTest, AcceptsOnlyTheRightBearerToken) {
  const std::string good = "Bearer s3cret", lower = "bearer s3cret", wrong = "Bearer s3creT",
                    basic = "Basic s3cret", bare = "s3cret";
  EXPECT_TRUE(CheckBearerToken(&good, "s3cret").ok());
  EXPECT_TRUE(CheckBearerToken(&lower, "s3cret").ok());
  EXPECT_EQ(CheckBearerToken(nullptr, "s3cret").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckBearerToken(&wrong, "s3cret").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckBearerToken(&basic, "s3cret").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckBearerToken(&bare, "s3cret").code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace ultramem::services
