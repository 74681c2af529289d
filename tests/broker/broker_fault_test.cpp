// Faults the broker must absorb: clients killed with SIGKILL (seen through their pidfd, at once), the
// broker itself killed and restarted (it adopts what validates, removes what does not, reclaims owners
// that died while no broker ran).
#include <cstring>
#include <optional>

#include "broker_test_util.hpp"
#include "shmbus/detail/stream_layout.hpp"
#include "shmbus/shmbus.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::btest {
namespace {

class BrokerFaultTest : public ::testing::Test {
 protected:
  TestDomain d;
};

// Read one value the child writes to the pipe, waiting at most `timeout`.
template <typename T>
std::optional<T> read_from_child(int fd, std::chrono::milliseconds timeout = 10s) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  T v{};
  if (::read(fd, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) return std::nullopt;
  return v;
}

// A child that registers, subscribes to `topic`, and then hands its control socket to a grandchild that
// keeps it open: when the child is killed its socket does not close, so only its pidfd tells the broker.
// Returns {child, holder}.
std::pair<pid_t, pid_t> subscriber_child_with_socket_holder(const TestDomain& d, const std::string& topic) {
  int p[2];
  EXPECT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(p[0]);
    auto fd = control::connect_socket(d.socket());
    if (!fd) ::_exit(2);
    if (!control::call(*fd, {{"op", "hello"}, {"version", control::kProtocolVersion}, {"client", "doomed"}},
                       5000ms))
      ::_exit(3);
    if (!control::call(*fd, {{"op", "subscribe"}, {"name", topic}, {"port", 1}}, 5000ms)) ::_exit(4);
    const pid_t holder = ::fork();
    if (holder == 0) {
      ::close(p[1]);
      ::sleep(60);  // holds *fd open; killed by the test
      ::_exit(0);
    }
    (void)!::write(p[1], &holder, sizeof holder);
    for (;;) ::pause();
  }
  ::close(p[1]);
  const auto holder = read_from_child<pid_t>(p[0]);
  ::close(p[0]);
  EXPECT_TRUE(holder.has_value()) << "the child did not subscribe";
  return {child, holder.value_or(-1)};
}

TEST_F(BrokerFaultTest, SubscriberKilledWithSigkillIsSeenThroughItsPidfdAtOnce) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}}).value("ok", false), true);
  }
  const auto [child, holder] = subscriber_child_with_socket_holder(d, "s");
  ASSERT_GT(holder, 0);
  ASSERT_EQ(topic_entry(d, "s")->value("subscribers", 0), 1);

  const auto t0 = Clock::now();
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  const bool freed = eventually([&] { return topic_entry(d, "s")->value("subscribers", -1) == 0; }, 5000ms);
  const auto elapsed = Clock::now() - t0;
  ::kill(holder, SIGKILL);
  ASSERT_TRUE(freed) << b.log();
  // The periodic safety net runs every second; the pidfd answers in milliseconds.
  EXPECT_LT(elapsed, 500ms) << b.log();
  const std::string log = b.log();
  EXPECT_NE(log.find("client pid " + std::to_string(child) + " (doomed) exited"), std::string::npos) << log;
  EXPECT_NE(log.find("released 1 port(s)"), std::string::npos) << log;
}

TEST_F(BrokerFaultTest, QueueConsumerKilledBeforeAckGetsItsMessageRedelivered) {
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "jobs"}, {"kind", "queue"}}).value("ok", false), true);
  }
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(p[0]);
    ClientOptions o;
    o.name = "doomed-consumer";
    auto client = Client::connect(o);
    if (!client) ::_exit(2);
    auto prod = client->producer("jobs");
    auto con = client->consumer("jobs");
    if (!prod || !con || !prod->publish(std::string_view("job-1"))) ::_exit(3);
    auto job = con->receive(5s);  // held, never acked
    if (!job) ::_exit(4);
    const char ok = 1;
    (void)!::write(p[1], &ok, 1);
    for (;;) ::pause();
  }
  ::close(p[1]);
  ASSERT_TRUE(read_from_child<char>(p[0]).has_value()) << b.log();
  ::close(p[0]);
  EXPECT_EQ(topic_entry(d, "jobs")->value("in_flight", 0), 1);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_TRUE(eventually([&] { return topic_entry(d, "jobs")->value("queued", 0) == 1; }, 2000ms)) << b.log();
  const json t = *topic_entry(d, "jobs");
  EXPECT_EQ(t.value("redelivered", 0), 1) << t;
  EXPECT_EQ(t.value("in_flight", 0), 1) << t;
  EXPECT_NE(b.log().find("redelivered 1 queue message(s)"), std::string::npos) << b.log();

  const CliResult r = run_cli(d, {"consume", "jobs", "--count", "1", "--timeout", "5", "--format", "json"});
  ASSERT_EQ(r.code, 0) << r;
  const json m = json::parse(r.out);
  EXPECT_EQ(m.value("payload", std::string()), "job-1");
  EXPECT_EQ(m.value("redelivered", false), true) << m;
  EXPECT_TRUE(eventually([&] { return topic_entry(d, "jobs")->value("in_flight", -1) == 0; }, 2000ms))
      << *topic_entry(d, "jobs");
}

TEST_F(BrokerFaultTest, RestartedBrokerAdoptsTopicsAndLiveSubscribers) {
  std::uint64_t stream_id = 0;
  std::uint32_t slot = 0;
  RawConn* live = nullptr;
  std::optional<RawConn> conn;
  {
    BrokerProcess first(d);
    ASSERT_TRUE(first.wait_ready()) << first.log();
    conn.emplace(d.socket());
    live = &*conn;
    live->hello("survivor");
    const json s = live->call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}});
    stream_id = s["topic"].value("id", std::uint64_t{0});
    ASSERT_EQ(live->call({{"op", "topic_create"}, {"name", "q"}, {"kind", "queue"}}).value("ok", false),
              true);
    const json sub = live->call({{"op", "subscribe"}, {"name", "s"}, {"port", 4}});
    slot = sub.value("slot", 0u);
    const ExitStatus st = first.signal_and_wait(SIGKILL);
    EXPECT_EQ(st.signal, SIGKILL);
  }
  // The dead broker's socket and pid file are still there; a new broker takes over.
  EXPECT_TRUE(exists(d.socket()));
  EXPECT_TRUE(live->closed_by_peer());
  BrokerProcess second(d);
  ASSERT_TRUE(second.wait_ready()) << second.log();
  EXPECT_EQ(d.broker_pid_from_file(), second.pid());
  auto s = topic_entry(d, "s");
  ASSERT_TRUE(s) << second.log();
  EXPECT_EQ(s->value("id", std::uint64_t{0}), stream_id);
  EXPECT_EQ(s->value("subscribers", 0), 1) << "the subscriber process lives: its slot stays";
  EXPECT_TRUE(topic_entry(d, "q").has_value());
  // The surviving client re-registers its slot.
  RawConn again(d.socket());
  again.hello("survivor");
  const json r =
      again.call({{"op", "reattach"}, {"name", "s"}, {"id", stream_id}, {"slot", slot}, {"port", 4}});
  EXPECT_EQ(r.value("ok", false), true) << r;
  // New topics get fresh ids (the directory's counter was adopted too).
  const json n = again.call({{"op", "topic_create"}, {"name", "new"}, {"kind", "stream"}});
  EXPECT_GT(n["topic"].value("id", std::uint64_t{0}), stream_id) << n;
}

TEST_F(BrokerFaultTest, SubscriberThatDiedWhileNoBrokerRanIsReclaimedAtAdoption) {
  std::optional<BrokerProcess> first(std::in_place, d);
  ASSERT_TRUE(first->wait_ready()) << first->log();
  {
    RawConn c(d.socket());
    c.hello();
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}}).value("ok", false), true);
  }
  const auto [child, holder] = subscriber_child_with_socket_holder(d, "s");
  ASSERT_GT(holder, 0);
  first->signal_and_wait(SIGKILL);
  first.reset();
  ::kill(child, SIGKILL);  // dies while no broker watches it
  ::waitpid(child, nullptr, 0);
  ::kill(holder, SIGKILL);
  BrokerProcess second(d);
  ASSERT_TRUE(second.wait_ready()) << second.log();
  EXPECT_EQ(topic_entry(d, "s")->value("subscribers", -1), 0) << second.log();
  EXPECT_NE(second.log().find("adopting the topic"), std::string::npos) << second.log();
}

TEST_F(BrokerFaultTest, RestartedBrokerRemovesSegmentsThatDoNotValidate) {
  std::uint64_t bad_id = 0;
  {
    BrokerProcess first(d);
    ASSERT_TRUE(first.wait_ready()) << first.log();
    RawConn c(d.socket());
    c.hello();
    bad_id = c.call({{"op", "topic_create"}, {"name", "bad"}, {"kind", "stream"}})["topic"].value(
        "id", std::uint64_t{0});
    ASSERT_EQ(c.call({{"op", "topic_create"}, {"name", "good"}, {"kind", "queue"}}).value("ok", false), true);
    first.signal_and_wait(SIGKILL);
  }
  // Scribble over the bad topic's magic, and leave a segment no directory entry names.
  {
    const int fd = ::open(d.topic_segment(bad_id).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    const char junk[8] = {'g', 'a', 'r', 'b', 'a', 'g', 'e', '!'};
    ASSERT_EQ(::pwrite(fd, junk, sizeof junk, 0), 8);
    ::close(fd);
  }
  write_file(d.topic_segment(77), "not a segment");
  BrokerProcess second(d);
  ASSERT_TRUE(second.wait_ready()) << second.log();
  EXPECT_FALSE(topic_entry(d, "bad").has_value());
  EXPECT_TRUE(topic_entry(d, "good").has_value());
  EXPECT_FALSE(exists(d.topic_segment(bad_id)));
  EXPECT_FALSE(exists(d.topic_segment(77)));
  const std::string log = second.log();
  EXPECT_NE(log.find("removing topic \"bad\""), std::string::npos) << log;
  EXPECT_NE(log.find("no directory entry names it"), std::string::npos) << log;
  // The name is free again.
  RawConn c(d.socket());
  c.hello();
  EXPECT_EQ(c.call({{"op", "topic_create"}, {"name", "bad"}, {"kind", "stream"}}).value("ok", false), true);
}

TEST_F(BrokerFaultTest, ForeignDirectorySegmentIsReplaced) {
  write_file(d.directory_segment(), std::string(4096, 'x'));
  BrokerProcess b(d);
  ASSERT_TRUE(b.wait_ready()) << b.log();
  EXPECT_NE(b.log().find("replaced the topic directory"), std::string::npos) << b.log();
  RawConn c(d.socket());
  c.hello();
  EXPECT_EQ(c.call({{"op", "topic_create"}, {"name", "a"}, {"kind", "stream"}}).value("ok", false), true);
}

// A broker killed inside attach, after the slot and its connections are set up but before the generation
// bump that tells the ports (a real SIGKILL at that fault point), leaves a change no port has seen. The
// next broker finishes it at adoption: the slot stays its live owner's, its connection is in both tables,
// the generation moves, and the retried request gets the same slot.
TEST_F(BrokerFaultTest, BrokerKilledBeforeTheGenerationBumpIsFinishedAtAdoption) {
  std::uint64_t gen_before = 0;
  int pub_slot = -1;
  std::optional<RawConn> c;  // stays open: its slots stay this live process's
  {
    BrokerProcess b(d, {}, {"SHMBUS_FAULT=stream.attach_subscriber.before_bump:1"});
    ASSERT_TRUE(b.wait_ready()) << b.log();
    c.emplace(d.socket());
    c->hello();
    ASSERT_EQ(c->call({{"op", "topic_create"}, {"name", "s"}, {"kind", "stream"}}).value("ok", false), true);
    const json r = c->call({{"op", "publisher"}, {"name", "s"}, {"port", 2}});
    ASSERT_EQ(r.value("ok", false), true) << r;
    pub_slot = r.value("slot", -1);
    auto dir = DirectoryView::open(d.domain()).value();
    auto t = TopicHandle::open(d.domain(), dir.find("s")->id).value();
    gen_before = t.stream().generation->load();
    c->send_json({{"op", "subscribe"}, {"name", "s"}, {"port", 1}});
    const ExitStatus st = b.wait(10s);
    ASSERT_EQ(st.signal, SIGKILL) << "the broker did not die at the fault point\n" << b.log();
  }
  BrokerProcess again(d);
  ASSERT_TRUE(again.wait_ready()) << again.log();
  auto dir = DirectoryView::open(d.domain()).value();
  auto t = TopicHandle::open(d.domain(), dir.find("s")->id).value();
  EXPECT_GT(t.stream().generation->load(), gen_before);  // the ports re-read their tables
  EXPECT_EQ(t.active_subscribers(), 1u);
  EXPECT_EQ(t.active_publishers(), 1u);
  RawConn c2(d.socket());
  c2.hello();
  const json r = c2.call({{"op", "subscribe"}, {"name", "s"}, {"port", 1}});  // the retry
  ASSERT_EQ(r.value("ok", false), true) << r;
  const auto sub_slot = static_cast<std::uint32_t>(r.value("slot", -1));
  EXPECT_EQ(t.active_subscribers(), 1u);  // the same slot, not a second one
  const std::uint32_t k = t.stream().pub_conn_at(static_cast<std::uint32_t>(pub_slot), sub_slot).load();
  ASSERT_LT(k, t.stream().conn_capacity);
  EXPECT_EQ(t.stream().sub_conn_at(sub_slot, static_cast<std::uint32_t>(pub_slot)).load(), k);
  EXPECT_EQ(t.stream().conn(k)->state.load(), detail::kConnActive);
}

}  // namespace
}  // namespace shmbus::btest
