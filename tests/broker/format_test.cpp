// The output helpers of the `shmbus` command (pure functions).
#include <gtest/gtest.h>

#include "format.hpp"

namespace shmbus::broker {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

TEST(FormatTest, Base64PadsLikeRfc4648) {
  EXPECT_EQ(base64(bytes("")), "");
  EXPECT_EQ(base64(bytes("f")), "Zg==");
  EXPECT_EQ(base64(bytes("fo")), "Zm8=");
  EXPECT_EQ(base64(bytes("foo")), "Zm9v");
  EXPECT_EQ(base64(bytes("foobar")), "Zm9vYmFy");
  EXPECT_EQ(base64(bytes(std::string_view("\xff\xfe\x01", 3))), "//4B");
}

TEST(FormatTest, Utf8ValidationRejectsWhatJsonCannotCarry) {
  EXPECT_TRUE(valid_utf8("plain ascii"));
  EXPECT_TRUE(valid_utf8("gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(valid_utf8("\xff"));
  EXPECT_FALSE(valid_utf8("\xc3"));              // cut off
  EXPECT_FALSE(valid_utf8("\xe2\x82"));          // cut off
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
}

TEST(FormatTest, AttrValuesThatAreIntegersBecomeInts) {
  auto a = parse_attr("prio=5");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->key, "prio");
  EXPECT_TRUE(a->view().value.is_int());
  EXPECT_EQ(a->view().value.as_int(), 5);
  EXPECT_EQ(parse_attr("n=-12")->view().value.as_int(), -12);
  EXPECT_EQ(parse_attr("n=+7")->view().value.as_int(), 7);
  EXPECT_FALSE(parse_attr("v=1.5")->view().value.is_int());
  EXPECT_FALSE(parse_attr("v=12abc")->view().value.is_int());
  EXPECT_FALSE(parse_attr("v=99999999999999999999")->view().value.is_int());  // does not fit int64
  EXPECT_EQ(parse_attr("region=eu=west")->view().value.as_string(), "eu=west");
  EXPECT_EQ(parse_attr("empty=")->view().value.as_string(), "");
  EXPECT_FALSE(parse_attr("novalue"));
  EXPECT_FALSE(parse_attr("=x"));
}

TEST(FormatTest, MessageJsonUsesBase64ForBinaryPayloads) {
  std::vector<Attr> attrs = {{"k", "v"}, {"n", 3}, {"x", 1.5}, {"b", true}};
  auto j = message_json("t", 7, 2, 99, attrs, bytes("hi"), 1, std::nullopt);
  EXPECT_EQ(j["payload"], "hi");
  EXPECT_EQ(j["attrs"]["k"], "v");
  EXPECT_EQ(j["attrs"]["n"], 3);
  EXPECT_EQ(j["attrs"]["x"], 1.5);
  EXPECT_EQ(j["attrs"]["b"], true);
  EXPECT_EQ(j["missed"], 1);
  EXPECT_FALSE(j.contains("redelivered"));
  j = message_json("q", 7, 2, 99, {}, bytes(std::string_view("\x80", 1)), 0, true);
  EXPECT_FALSE(j.contains("payload"));
  EXPECT_EQ(j["payload_b64"], "gA==");
  EXPECT_EQ(j["redelivered"], true);
  EXPECT_EQ(j["size"], 1);
}

TEST(FormatTest, TableAlignsNumbersRight) {
  EXPECT_EQ(format_table({"NAME", "N"}, {{"a", "5"}, {"long.name", "123"}}),
            "NAME         N\n"
            "a            5\n"
            "long.name  123\n");
}

TEST(FormatTest, PrometheusEscapesLabelValues) {
  const nlohmann::json topics =
      nlohmann::json::array({{{"name", "a\"b"}, {"kind", "stream"}, {"published", 4}}});
  const std::string text = prometheus_text(topics, "d");
  EXPECT_NE(text.find("# TYPE shmbus_topic_published_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("shmbus_topic_published_total{domain=\"d\",topic=\"a\\\"b\",kind=\"stream\"} 4\n"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace shmbus::broker
