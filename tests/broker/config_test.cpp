// The broker's TOML configuration: what parses, and errors that name FILE:LINE:COLUMN, both through
// parse_config() and through `shmbus broker --check-config` / `shmbus broker -c` (exit 78).
#include "config.hpp"
#include "broker_test_util.hpp"

namespace shmbus::btest {
namespace {

using broker::parse_config;

std::string error_of(std::string_view text) {
  auto r = parse_config(text, "b.toml");
  return r ? std::string("(parsed)") : r.error().message();
}

TEST(BrokerConfigTest, EmptyFileGivesDefaults) {
  auto c = parse_config("", "b.toml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_FALSE(c->log_level);
  EXPECT_EQ(c->segment_mode, 0600u);
  EXPECT_EQ(c->max_topics, 1024u);
  EXPECT_EQ(c->max_clients, 256u);
  EXPECT_TRUE(c->topics.empty());
}

TEST(BrokerConfigTest, FullExampleParses) {
  auto c = parse_config(R"(
log_level = "warn"
idle_exit_s = 30
[segments]
mode = "0660"
group = "0"
[defaults]
depth = 32
max_size = 2048
overflow = "block"
max_subscribers = 4
[limits]
max_topics = 10
max_clients = 20
[[topic]]
name = "orders.new"
kind = "queue"
depth = 256
max_size = 1024
[[topic]]
name = "ticks"
)",
                        "b.toml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->log_level, "warn");
  EXPECT_EQ(c->idle_exit_s, 30u);
  EXPECT_EQ(c->segment_mode, 0660u);
  EXPECT_EQ(c->segment_gid, 0u);
  EXPECT_EQ(c->defaults.depth, 32u);
  EXPECT_EQ(c->defaults.overflow, Overflow::block);
  EXPECT_EQ(c->max_topics, 10u);
  EXPECT_EQ(c->max_clients, 20u);
  ASSERT_EQ(c->topics.size(), 2u);
  EXPECT_EQ(c->topics[0].name, "orders.new");
  EXPECT_EQ(c->topics[0].options.kind, TopicKind::queue);
  EXPECT_EQ(c->topics[0].options.depth, 256u);
  EXPECT_EQ(c->topics[0].options.max_size, 1024u);
  // A topic that sets nothing takes the defaults, wherever [defaults] sits in the file.
  EXPECT_EQ(c->topics[1].options.kind, TopicKind::stream);
  EXPECT_EQ(c->topics[1].options.depth, 32u);
  EXPECT_EQ(c->topics[1].options.max_subscribers, 4u);
}

TEST(BrokerConfigTest, DefaultsAfterTopicsStillApply) {
  auto c = parse_config("[[topic]]\nname = \"a\"\n[defaults]\ndepth = 8\n", "b.toml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->topics.at(0).options.depth, 8u);
}

TEST(BrokerConfigTest, OctalIntegerModeIsAccepted) {
  auto c = parse_config("[segments]\nmode = 0o640\n", "b.toml");
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->segment_mode, 0640u);
}

TEST(BrokerConfigTest, UnknownTopLevelKeyNamesLineAndColumn) {
  EXPECT_EQ(error_of("log_level = \"info\"\n  colour = 3\n"),
            "b.toml:2:3: unknown key \"colour\" in the top level");
}

TEST(BrokerConfigTest, UnknownKeyInATableNamesIt) {
  EXPECT_EQ(error_of("[limits]\nmax_topics = 3\nmax_tpoics = 4\n"),
            "b.toml:3:1: unknown key \"max_tpoics\" in [limits]");
  EXPECT_EQ(error_of("[[topic]]\nname = \"a\"\nkindd = \"queue\"\n"),
            "b.toml:3:1: unknown key \"kindd\" in [[topic]]");
}

TEST(BrokerConfigTest, WrongTypeNamesTheValue) {
  EXPECT_EQ(error_of("[defaults]\ndepth = \"deep\"\n"),
            "b.toml:2:9: [defaults] depth must be an integer from 1 to 1048576");
  EXPECT_EQ(error_of("idle_exit_s = 0\n"), "b.toml:1:15: idle_exit_s must be an integer from 1 to 604800");
}

TEST(BrokerConfigTest, BadValuesAreRefused) {
  EXPECT_NE(error_of("log_level = \"loud\"\n").find("b.toml:1:13: log_level \"loud\" is not one of"),
            std::string::npos);
  EXPECT_NE(error_of("[segments]\nmode = \"0999\"\n").find("b.toml:2:8:"), std::string::npos);
  EXPECT_NE(error_of("[segments]\nmode = \"0044\"\n").find("must grant the owner"), std::string::npos);
  EXPECT_NE(error_of("[segments]\ngroup = \"no-such-group-xyz\"\n")
                .find("b.toml:2:9: [segments] group \"no-such-group-xyz\" does not exist"),
            std::string::npos);
  EXPECT_NE(error_of("[defaults]\noverflow = \"spill\"\n").find("b.toml:2:12:"), std::string::npos);
  EXPECT_NE(
      error_of("[[topic]]\nname = \"a..b\"\n").find("b.toml:2:8: topic \"a..b\": empty token at offset 2"),
      std::string::npos);
  EXPECT_NE(error_of("[[topic]]\nname = \"a\"\nkind = \"pipe\"\n").find("b.toml:3:8:"), std::string::npos);
  EXPECT_NE(error_of("[[topic]]\nkind = \"queue\"\n").find("b.toml:1:1: [[topic]] without a name"),
            std::string::npos);
  EXPECT_NE(error_of("[[topic]]\nname = \"a\"\n[[topic]]\nname = \"a\"\n")
                .find("b.toml:4:8: topic \"a\" is declared twice"),
            std::string::npos);
  EXPECT_NE(error_of("[limits]\nmax_topics = 1\n[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\n")
                .find("max_topics is 1"),
            std::string::npos);
  EXPECT_NE(error_of("segments = 3\n").find("b.toml:1:12: segments must be a table"), std::string::npos);
}

TEST(BrokerConfigTest, TomlSyntaxErrorNamesLineAndColumn) {
  const std::string e = error_of("log_level = \"info\"\n[limits\n");
  EXPECT_EQ(e.rfind("b.toml:2:", 0), 0u) << e;
}

// ---- through the binary ----

class BrokerConfigCliTest : public ::testing::Test {
 protected:
  TestDomain d;
};

TEST_F(BrokerConfigCliTest, CheckConfigReportsTopicCount) {
  const std::string cfg = d.path("ok.toml");
  write_file(cfg, "[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\nkind = \"queue\"\n");
  const CliResult r = run_cli(d, {"broker", "--check-config", "-c", cfg});
  EXPECT_EQ(r.code, 0) << r;
  EXPECT_EQ(r.out, "config OK: 2 topics\n");
}

TEST_F(BrokerConfigCliTest, CheckConfigReportsTheErrorWithLineAndColumnAndExits78) {
  const std::string cfg = d.path("bad.toml");
  write_file(cfg, "[defaults]\ndepth = 64\nmax_sise = 10\n");
  const CliResult r = run_cli(d, {"broker", "--check-config", "-c", cfg});
  EXPECT_EQ(r.code, 78) << r;
  EXPECT_NE(r.err.find(cfg + ":3:1: unknown key \"max_sise\" in [defaults]"), std::string::npos) << r;
}

TEST_F(BrokerConfigCliTest, BrokerWithABadConfigExits78AndStartsNothing) {
  const std::string cfg = d.path("bad.toml");
  write_file(cfg, "log_level = 5\n");
  const CliResult r = run_cli(d, {"broker", "-c", cfg});
  EXPECT_EQ(r.code, 78) << r;
  EXPECT_NE(r.err.find(cfg + ":1:13: log_level must be a string"), std::string::npos) << r;
  EXPECT_FALSE(exists(d.socket()));
  EXPECT_TRUE(d.segments().empty());
}

TEST_F(BrokerConfigCliTest, CheckConfigWithoutAFileIsAUsageError) {
  const CliResult r = run_cli(d, {"broker", "--check-config"});
  EXPECT_EQ(r.code, 64) << r;
}

TEST_F(BrokerConfigCliTest, MissingConfigFileIsAConfigError) {
  const CliResult r = run_cli(d, {"broker", "-c", d.path("absent.toml")});
  EXPECT_EQ(r.code, 78) << r;
  EXPECT_NE(r.err.find("absent.toml"), std::string::npos) << r;
}

}  // namespace
}  // namespace shmbus::btest
