// The broker as a real process: one per domain, the control protocol and its failure modes, shutdown,
// autostart idle exit, and the topics of a config file.
#include "broker_test_util.hpp"

namespace shmbus::btest {
namespace {

class BrokerTest : public ::testing::Test {
 protected:
  TestDomain d;
};

TEST_F(BrokerTest, AnswersHelloAndStatus) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  const json h = c.hello("status-test");
  EXPECT_EQ(h.value("ok", false), true) << h;
  EXPECT_EQ(h.value("version", 0), control::kProtocolVersion);
  EXPECT_EQ(h.value("broker_pid", 0), b.pid());
  EXPECT_EQ(h.value("domain", std::string()), d.domain());
  const json s = c.call({{"op", "status"}});
  EXPECT_EQ(s.value("ok", false), true) << s;
  EXPECT_EQ(s.value("pid", 0), b.pid());
  EXPECT_EQ(s.value("domain", std::string()), d.domain());
  EXPECT_GE(s.value("clients", 0), 1);
  EXPECT_EQ(s.value("topics", -1), 0);
  EXPECT_EQ(s.value("autostart", true), false);
  EXPECT_EQ(s.value("runtime_dir", std::string()), d.runtime_dir());
  EXPECT_GE(s.value("uptime_s", -1.0), 0.0);
  EXPECT_EQ(d.broker_pid_from_file(), b.pid());
}

TEST_F(BrokerTest, SecondBrokerForTheDomainIsRefusedWithThePid) {
  BrokerProcess first(d);
  ASSERT_TRUE(first.wait_ready()) << first.log();
  const CliResult r = run_cli(d, {"broker", "--domain", d.domain()});
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(r.err.find("a broker for domain " + d.domain() + " already runs (pid " +
                       std::to_string(first.pid()) + ", runtime dir " + d.runtime_dir() + ")"),
            std::string::npos)
      << r;
  // The refused broker touched nothing: the first still serves, with its socket and pid file.
  EXPECT_TRUE(first.running());
  RawConn c(d.socket());
  EXPECT_EQ(c.hello().value("broker_pid", 0), first.pid());
}

// The domain lock lives in world-writable /dev/shm: a file another user planted there is refused with a
// message that names the owner, never followed or written.
TEST_F(BrokerTest, DomainLockOwnedByAnotherUserIsRefusedWithItsOwner) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  const std::string cmd = "setpriv --reuid=65534 --regid=65534 --clear-groups touch " + d.lock_file();
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const CliResult r = run_cli(d, {"broker", "--domain", d.domain()});
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(r.err.find("is owned by uid 65534, not by this user"), std::string::npos) << r;
  EXPECT_TRUE(d.segments().empty());
}

// The segments are named by domain only (/dev/shm/shmbus.<domain>.*), so a broker started with another
// runtime directory must meet the first one's lock, not take its segments over.
TEST_F(BrokerTest, SecondBrokerWithAnotherRuntimeDirIsRefusedAndTouchesNothing) {
  BrokerProcess first(d);
  ASSERT_TRUE(first.wait_ready()) << first.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "mine"}, {"kind", "queue"}}).value("ok", false), true);
  }
  const auto before = d.segments();
  ASSERT_EQ(before.size(), 2u);
  char tmpl[] = "/tmp/shmbus-bt-other-XXXXXX";
  const std::string other = ::mkdtemp(tmpl);
  const CliResult r = run_cli(d, {"broker", "--domain", d.domain()}, "", {"SHMBUS_RUNTIME_DIR=" + other});
  std::filesystem::remove_all(other);
  EXPECT_EQ(r.code, 1) << r;
  EXPECT_NE(
      r.err.find("already runs (pid " + std::to_string(first.pid()) + ", runtime dir " + d.runtime_dir()),
      std::string::npos)
      << r;
  EXPECT_EQ(d.segments(), before);
  EXPECT_TRUE(first.running());
  EXPECT_TRUE(topic_entry(d, "mine").has_value());
}

TEST_F(BrokerTest, CreatesListsAndDeletesTopics) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  c.hello();
  json r = c.call(
      {{"op", "topic_create"}, {"name", "orders.new"}, {"kind", "queue"}, {"depth", 100}, {"max_size", 512}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(r["topic"].value("name", std::string()), "orders.new");
  EXPECT_EQ(r["topic"].value("kind", std::string()), "queue");
  EXPECT_EQ(r["topic"].value("depth", 0), 128);  // rounded up to a power of two
  EXPECT_EQ(r["topic"].value("max_size", 0), 512);
  const std::uint64_t id = r["topic"].value("id", std::uint64_t{0});
  EXPECT_TRUE(exists(d.topic_segment(id)));

  r = c.call({{"op", "topic_create"}, {"name", "orders.new"}, {"kind", "stream"}});
  EXPECT_EQ(r.value("code", std::string()), "already_exists") << r;
  r = c.call({{"op", "topic_create"}, {"name", "bad..name"}});
  EXPECT_EQ(r.value("code", std::string()), "invalid_argument") << r;
  EXPECT_NE(r.value("error", std::string()).find("offset 4"), std::string::npos) << r;
  r = c.call({{"op", "topic_create"}, {"name", "x"}, {"depth", "deep"}});
  EXPECT_EQ(r.value("code", std::string()), "invalid_argument") << r;
  r = c.call({{"op", "topic_create"}, {"name", "x"}, {"max_subscribers", 5000}});  // above kMaxStreamPorts
  EXPECT_EQ(r.value("code", std::string()), "invalid_argument") << r;

  r = c.call({{"op", "topics"}});
  ASSERT_EQ(r["topics"].size(), 1u) << r;
  const json& t = r["topics"][0];
  for (const char* key :
       {"name", "id", "kind", "depth", "max_size", "overflow", "max_subscribers", "subscribers", "published",
        "delivered", "acked", "dropped", "redelivered", "queued", "in_flight"})
    EXPECT_TRUE(t.contains(key)) << key << " missing in " << t;

  r = c.call({{"op", "topic_delete"}, {"name", "orders.new"}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  EXPECT_FALSE(exists(d.topic_segment(id)));
  r = c.call({{"op", "topic_delete"}, {"name", "orders.new"}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;
  EXPECT_EQ(c.call({{"op", "topics"}})["topics"].size(), 0u);
}

TEST_F(BrokerTest, SubscribeAndUnsubscribeMoveTheSlot) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  c.hello();
  ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}, {"max_subscribers", 2}})
                .value("ok", false),
            true);
  json r = c.call({{"op", "subscribe"}, {"name", "s"}, {"port", 7}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  const auto slot0 = r.value("slot", 99);
  EXPECT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);
  r = c.call({{"op", "subscribe"}, {"name", "s"}, {"port", 8}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  EXPECT_NE(r.value("slot", 99), slot0);
  r = c.call({{"op", "subscribe"}, {"name", "s"}, {"port", 9}});
  EXPECT_EQ(r.value("code", std::string()), "no_space") << r;
  r = c.call({{"op", "subscribe"}, {"name", "nope"}, {"port", 9}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;

  r = c.call({{"op", "unsubscribe"}, {"name", "s"}, {"slot", slot0}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);
  r = c.call({{"op", "unsubscribe"}, {"name", "s"}, {"slot", slot0}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;

  // A subscribe on a queue is refused with the reason.
  ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "q"}, {"kind", "queue"}}).value("ok", false), true);
  r = c.call({{"op", "subscribe"}, {"name", "q"}, {"port", 1}});
  EXPECT_EQ(r.value("code", std::string()), "invalid_argument") << r;
}

TEST_F(BrokerTest, ClosedConnectionOfALiveProcessFreesItsSlots) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn admin(d.socket());
  admin.hello();
  ASSERT_EQ(admin.call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}}).value("ok", false), true);
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "subscribe"}, {"name", "s"}, {"port", 1}}).value("ok", false), true);
    EXPECT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);
  }  // closes the socket; this process lives on
  EXPECT_TRUE(eventually([&] { return topic_entry(d, "s")->value("subscribers", -1) == 0; }, 2000ms))
      << b.log();
}

TEST_F(BrokerTest, ReattachKeepsAnActiveSlotForItsOwnerOnly) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  c.hello();
  const json t = c.call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}});
  const std::uint64_t id = t["topic"].value("id", std::uint64_t{0});
  json r = c.call({{"op", "subscribe"}, {"name", "s"}, {"port", 5}});
  ASSERT_EQ(r.value("ok", false), true) << r;
  const int slot = r.value("slot", -1);
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id}, {"slot", slot}, {"port", 5}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(r.value("slot", -1), slot);
  EXPECT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id}, {"slot", slot}, {"port", 5}});  // idempotent
  EXPECT_EQ(r.value("ok", false), true) << r;
  EXPECT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id + 100}, {"slot", slot}, {"port", 5}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;
  // A slot that is not active (never given, or closed meanwhile) cannot be reattached: subscribe anew.
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id}, {"slot", slot + 1}, {"port", 6}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id}, {"slot", 1 << 20}, {"port", 6}});
  EXPECT_EQ(r.value("code", std::string()), "invalid_argument") << r;
  r = c.call({{"op", "unsubscribe"}, {"name", "s"}, {"slot", slot}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  r = c.call({{"op", "reattach"}, {"name", "s"}, {"id", id}, {"slot", slot}, {"port", 5}});
  EXPECT_EQ(r.value("code", std::string()), "not_found") << r;
}

// ---- protocol failures: the bad client is answered and dropped, the broker and others carry on ----

class BrokerProtocolTest : public BrokerTest {
 protected:
  void SetUp() override {
    broker_.emplace(d);
    ASSERT_TRUE(broker_->wait_ready()) << broker_->log();
    good_.emplace(d.socket());
    ASSERT_EQ(good_->hello("good").value("ok", false), true);
  }
  // The well-behaved client still gets answers and the broker still runs.
  void expect_broker_serves() {
    EXPECT_TRUE(broker_->running());
    const json s = good_->call({{"op", "status"}});
    EXPECT_EQ(s.value("ok", false), true) << s;
  }
  std::optional<BrokerProcess> broker_;
  std::optional<RawConn> good_;
};

TEST_F(BrokerProtocolTest, MalformedFrameGetsAnErrorAndADisconnect) {
  RawConn bad(d.socket());
  bad.send_bytes(RawConn::frame("this is { not json"));
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("ok", true), false);
  EXPECT_EQ(r->value("code", std::string()), "protocol_error") << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
}

TEST_F(BrokerProtocolTest, NonObjectFrameGetsProtocolError) {
  RawConn bad(d.socket());
  bad.send_bytes(RawConn::frame("[1,2,3]"));
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("ok", true), false);
  EXPECT_EQ(r->value("code", std::string()), "protocol_error") << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
}

TEST_F(BrokerProtocolTest, OversizeFrameGetsTooLargeAndADisconnect) {
  RawConn bad(d.socket());
  bad.send_bytes(std::string("\x00\x00\x10\x00", 4));  // announces 1 MiB; nothing follows
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("code", std::string()), "too_large") << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
  EXPECT_NE(broker_->log().find("exceeds"), std::string::npos);
}

TEST_F(BrokerProtocolTest, FirstRequestOtherThanHelloIsRefused) {
  RawConn bad(d.socket());
  bad.send_json({{"op", "status"}});
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("code", std::string()), "protocol_error") << *r;
  EXPECT_NE(r->value("error", std::string()).find("hello"), std::string::npos) << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
}

TEST_F(BrokerProtocolTest, FrameWithoutOpIsRefused) {
  RawConn bad(d.socket());
  bad.send_json({{"version", 1}});
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("code", std::string()), "protocol_error") << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
}

TEST_F(BrokerProtocolTest, OtherProtocolVersionGetsVersionMismatch) {
  RawConn bad(d.socket());
  bad.send_json({{"op", "hello"}, {"version", 99}, {"client", "future"}});
  auto r = control::recv_frame(bad.fd(), 5000ms);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("code", std::string()), "version_mismatch") << *r;
  EXPECT_TRUE(bad.closed_by_peer());
  expect_broker_serves();
}

TEST_F(BrokerProtocolTest, UnknownOpAfterHelloIsAnErrorButKeepsTheConnection) {
  RawConn c(d.socket());
  c.hello();
  const json r = c.call({{"op", "frobnicate"}});
  EXPECT_EQ(r.value("code", std::string()), "protocol_error") << r;
  EXPECT_EQ(c.call({{"op", "status"}}).value("ok", false), true);
}

TEST_F(BrokerProtocolTest, FramesSplitAndBatchedAcrossWritesAreParsed) {
  RawConn c(d.socket());
  const std::string hello = RawConn::frame(
      json{{"op", "hello"}, {"version", control::kProtocolVersion}, {"client", "split"}}.dump());
  c.send_bytes(hello.substr(0, 2));  // half a length prefix
  std::this_thread::sleep_for(50ms);
  c.send_bytes(hello.substr(2, 10));
  std::this_thread::sleep_for(50ms);
  c.send_bytes(hello.substr(12));
  auto r = c.recv();
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("ok", false), true) << *r;
  // Two requests in one write: two replies, in order.
  c.send_bytes(RawConn::frame(json{{"op", "status"}}.dump()) + RawConn::frame(json{{"op", "topics"}}.dump()));
  auto a = c.recv();
  auto b = c.recv();
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(a->contains("pid")) << *a;
  EXPECT_TRUE(b->contains("topics")) << *b;
}

TEST_F(BrokerProtocolTest, ManyBadClientsInARowLeaveTheBrokerServing) {
  for (int i = 0; i < 50; ++i) {
    RawConn bad(d.socket());
    bad.send_bytes(i % 2 == 0 ? std::string("\xff\xff\xff\xff", 4) : RawConn::frame("nope"));
    (void)control::recv_frame(bad.fd(), 2000ms);
  }
  expect_broker_serves();
}

// ---- shutdown ----

TEST_F(BrokerTest, StopRemovesSocketAndPidFileAndKeepsTheTopics) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}, {"kind", "stream"}}).value("ok", false), true);
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "b"}, {"kind", "queue"}}).value("ok", false), true);
    EXPECT_EQ(d.segments().size(), 3u);  // the directory and two topics
    const json r = c.call({{"op", "stop"}});
    EXPECT_EQ(r.value("ok", false), true) << r;
    EXPECT_EQ(r.value("purge", true), false) << r;
  }
  const ExitStatus st = b.wait(10s);
  EXPECT_TRUE(st.exited) << b.log();
  EXPECT_EQ(st.code, 0);
  EXPECT_EQ(d.segments().size(), 3u);
  EXPECT_FALSE(exists(d.socket()));
  EXPECT_FALSE(exists(d.pid_file()));
  EXPECT_NE(b.log().find("keeping 2 topic(s)"), std::string::npos) << b.log();
  BrokerProcess again(d);
  ASSERT_TRUE(again.wait_ready()) << again.log();
  EXPECT_TRUE(topic_entry(d, "a").has_value()) << again.log();
  EXPECT_TRUE(topic_entry(d, "b").has_value()) << again.log();
}

TEST_F(BrokerTest, StopWithPurgeRemovesEverySegment) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}, {"kind", "queue"}}).value("ok", false), true);
    EXPECT_EQ(c.call({{"op", "stop"}, {"purge", "yes"}}).value("code", std::string()), "invalid_argument");
    const json r = c.call({{"op", "stop"}, {"purge", true}});
    EXPECT_EQ(r.value("purge", false), true) << r;
  }
  const ExitStatus st = b.wait(10s);
  EXPECT_TRUE(st.exited && st.code == 0) << b.log();
  EXPECT_TRUE(d.segments().empty());
  EXPECT_NE(b.log().find("removed 2 segment(s)"), std::string::npos) << b.log();
}

TEST_F(BrokerTest, SigtermKeepsTopicsForTheNextBroker) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}, {"kind", "stream"}}).value("ok", false), true);
  }
  EXPECT_EQ(d.segments().size(), 2u);
  const ExitStatus st = b.signal_and_wait(SIGTERM);
  EXPECT_TRUE(st.exited && st.code == 0) << b.log();
  EXPECT_EQ(d.segments().size(), 2u);
  EXPECT_FALSE(exists(d.socket()));
  BrokerProcess again(d);
  ASSERT_TRUE(again.wait_ready()) << again.log();
  EXPECT_TRUE(topic_entry(d, "a").has_value()) << again.log();
}

TEST_F(BrokerTest, SigintShutsDownLikeSigterm) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  const ExitStatus st = b.signal_and_wait(SIGINT);
  EXPECT_TRUE(st.exited && st.code == 0) << b.log();
  EXPECT_EQ(d.segments().size(), 1u);  // the (empty) directory stays for the next broker
  EXPECT_FALSE(exists(d.socket()));
}

TEST_F(BrokerTest, PurgeOnExitRemovesEverySegment) {
  {
    BrokerProcess b(d, {"--purge-on-exit"});
    ASSERT_TRUE(b.wait_ready()) << b.log();
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "gone"}, {"kind", "stream"}}).value("ok", false),
              true);
    const ExitStatus st = b.signal_and_wait(SIGTERM);
    EXPECT_TRUE(st.exited && st.code == 0) << b.log();
  }
  EXPECT_TRUE(d.segments().empty());
  // --keep-segments, the old spelling of the default, is still accepted.
  BrokerProcess again(d, {"--keep-segments"});
  ASSERT_TRUE(again.wait_ready()) << again.log();
  EXPECT_FALSE(topic_entry(d, "gone").has_value()) << again.log();
}

// ---- autostart ----

TEST_F(BrokerTest, AutostartedBrokerExitsWhenIdleAndKeepsTheTopics) {
  BrokerProcess b(d, {"--autostart", "--idle-exit", "1"});
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}, {"kind", "stream"}}).value("ok", false), true);
    EXPECT_EQ(c.call({{"op", "status"}}).value("autostart", false), true);
    // A connected client keeps it alive past the idle time.
    std::this_thread::sleep_for(1500ms);
    EXPECT_TRUE(b.running()) << b.log();
  }
  const auto t0 = Clock::now();
  const ExitStatus st = b.wait(10s);
  EXPECT_TRUE(st.exited && st.code == 0) << b.log();
  EXPECT_LT(Clock::now() - t0, 5s);
  EXPECT_EQ(d.segments().size(), 2u);
  EXPECT_NE(b.log().find("no clients for 1 s"), std::string::npos) << b.log();
}

TEST_F(BrokerTest, BrokerStartedByHandNeverIdlesOut) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  std::this_thread::sleep_for(1500ms);
  EXPECT_TRUE(b.running());
  const CliResult r = run_cli(d, {"broker", "--idle-exit", "1"});  // --idle-exit needs --autostart
  EXPECT_EQ(r.code, 64) << r;
}

// ---- config ----

TEST_F(BrokerTest, ConfigTopicsAndDefaultsApplyAtStart) {
  const std::string cfg = d.path("broker.toml");
  write_file(cfg, R"(log_level = "debug"
[defaults]
depth = 16
max_size = 100
[[topic]]
name = "orders.new"
kind = "queue"
depth = 256
max_size = 1024
[[topic]]
name = "ticks"
)");
  BrokerProcess b(d, {"-c", cfg});
  ASSERT_TRUE(b.wait_ready()) << b.log();
  auto q = topic_entry(d, "orders.new");
  ASSERT_TRUE(q) << b.log();
  EXPECT_EQ(q->value("kind", std::string()), "queue");
  EXPECT_EQ(q->value("depth", 0), 256);
  EXPECT_EQ(q->value("max_size", 0), 1024);
  auto s = topic_entry(d, "ticks");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->value("kind", std::string()), "stream");
  EXPECT_EQ(s->value("depth", 0), 16);
  EXPECT_EQ(s->value("max_size", 0), 100);
  // topic_create without sizes takes the [defaults].
  RawConn c(d.socket());
  c.hello();
  const json r = c.call({{"op", "topic_create"}, {"name", "more"}});
  EXPECT_EQ(r["topic"].value("depth", 0), 16) << r;
  EXPECT_EQ(r["topic"].value("max_size", 0), 100) << r;
}

TEST_F(BrokerTest, LimitsAreEnforced) {
  const std::string cfg = d.path("broker.toml");
  write_file(cfg, "[limits]\nmax_topics = 2\nmax_clients = 2\n");
  BrokerProcess b(d, {"-c", cfg});
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  c.hello();
  EXPECT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}}).value("ok", false), true);
  EXPECT_EQ(c.call({{"op", "topic_create"}, {"name", "b"}}).value("ok", false), true);
  EXPECT_EQ(c.call({{"op", "topic_create"}, {"name", "c"}}).value("code", std::string()), "no_space");
  RawConn c2(d.socket());
  EXPECT_EQ(c2.hello().value("ok", false), true);
  RawConn c3(d.socket());
  auto r = c3.recv();  // refused at once, before any request
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->value("code", std::string()), "no_space") << *r;
  EXPECT_TRUE(c3.closed_by_peer());
}

TEST_F(BrokerTest, SegmentModeAppliesToSocketAndSegments) {
  const std::string cfg = d.path("broker.toml");
  write_file(cfg, "[segments]\nmode = \"0660\"\n");
  BrokerProcess b(d, {"-c", cfg});
  ASSERT_TRUE(b.wait_ready()) << b.log();
  RawConn c(d.socket());
  c.hello();
  const json r = c.call({{"op", "topic_create"}, {"name", "a"}});
  const std::uint64_t id = r["topic"].value("id", std::uint64_t{0});
  struct stat st {};
  ASSERT_EQ(::stat(d.topic_segment(id).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat(d.directory_segment().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat(d.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

}  // namespace
}  // namespace shmbus::btest
