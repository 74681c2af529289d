#include "shmbus/segment.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "test_util.hpp"

namespace shmbus {
namespace {

using test::ScopedName;
using test::unique_name;

struct Root {
  std::uint64_t a;
  Ref<std::uint64_t> b;
};

Segment make_published(const std::string& name, std::size_t size = 1 << 16) {
  auto seg = Segment::create(name, {.size = size, .kind = "test"});
  EXPECT_TRUE(seg) << seg.error().message();
  auto root = seg->allocate<Root>();
  EXPECT_TRUE(root);
  seg->at(*root)->a = 42;
  seg->set_root(*root);
  seg->publish();
  return std::move(seg).value();
}

std::string shm_path(const std::string& name) {
  return "/dev/shm" + segment_shm_name(name);
}

TEST(SegmentTest, CreatePublishOpenSeesRootAtAnotherAddress) {
  ScopedName n(unique_name("seg"));
  Segment a = make_published(n.name);
  auto b = Segment::open(n.name, {.expect_kind = "test"});
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_NE(a.base(), b->base());
  EXPECT_EQ(b->root<Root>()->a, 42u);
  EXPECT_EQ(b->header().creator_pid, getpid());
  EXPECT_EQ(b->header().layout_version, kLayoutVersion);
  EXPECT_EQ(b->size() % 4096, 0u);
}

TEST(SegmentTest, CreateTwiceFailsWithAlreadyExists) {
  ScopedName n(unique_name("dup"));
  Segment a = make_published(n.name);
  auto b = Segment::create(n.name, {.size = 4096});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), Errc::already_exists);
  EXPECT_NE(b.error().message().find(n.name), std::string::npos);
}

TEST(SegmentTest, OpenMissingFailsWithNotFound) {
  auto s = Segment::open(unique_name("missing"));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::not_found);
}

TEST(SegmentTest, BadNamesAreRejectedWithOffset) {
  auto s = Segment::create("a/b", {.size = 4096});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::invalid_argument);
  EXPECT_NE(s.error().message().find("offset 1"), std::string::npos) << s.error().message();
  EXPECT_FALSE(Segment::create("", {.size = 4096}));
  EXPECT_FALSE(Segment::create(".hidden", {.size = 4096}));
  EXPECT_FALSE(Segment::create(std::string(201, 'x'), {.size = 4096}));
  EXPECT_TRUE(Segment::check_name(std::string(200, 'x')));
}

TEST(SegmentTest, TooSmallSizeIsRejected) {
  auto s = Segment::create(unique_name("small"), {.size = 10});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Errc::invalid_argument);
}

TEST(SegmentTest, ModeIsExactWhateverTheUmask) {
  const mode_t old = umask(0077);
  {
    ScopedName n(unique_name("mode"));
    auto s = Segment::create(n.name, {.size = 4096, .mode = 0640});
    ASSERT_TRUE(s);
    struct stat st {};
    ASSERT_EQ(stat(shm_path(n.name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0640u);
  }
  umask(0);
  {
    ScopedName n(unique_name("mode"));
    auto s = Segment::create(n.name, {.size = 4096});
    ASSERT_TRUE(s);
    struct stat st {};
    ASSERT_EQ(stat(shm_path(n.name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  umask(old);
}

TEST(SegmentTest, OtherUidCannotOpenMode0600) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to switch to uid 65534";
  ScopedName n(unique_name("perm"));
  Segment a = make_published(n.name);
  const pid_t pid = test::fork_child([&] {
    if (setgid(65534) != 0 || setuid(65534) != 0) return 10;
    auto s = Segment::open(n.name);
    if (s) return 11;
    return s.error().code() == Errc::permission_denied ? 0 : 12;
  });
  auto r = test::wait_child(pid);
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0);
}

TEST(SegmentTest, UnpublishedSegmentIsIncomplete) {
  ScopedName n(unique_name("unpub"));
  auto a = Segment::create(n.name, {.size = 4096});
  ASSERT_TRUE(a);
  auto b = Segment::open(n.name);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), Errc::incomplete);
  a->publish();
  EXPECT_TRUE(Segment::open(n.name));
}

TEST(SegmentTest, ArenaAlignsAndReportsNoSpace) {
  ScopedName n(unique_name("arena"));
  auto s = Segment::create(n.name, {.size = 4096});
  ASSERT_TRUE(s);
  auto a = s->allocate<std::uint8_t>(3);
  ASSERT_TRUE(a);
  auto b = s->allocate<std::uint64_t>(1, 128);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->offset % 128, 0u);
  EXPECT_GT(b->offset, a->offset);
  auto c = s->allocate_bytes(1 << 20, 8);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code(), Errc::no_space);
  EXPECT_NE(c.error().message().find("left"), std::string::npos);
}

TEST(SegmentTest, RemoveThenOpenIsNotFoundButMappingStays) {
  ScopedName n(unique_name("rm"));
  Segment a = make_published(n.name);
  ASSERT_TRUE(Segment::remove(n.name));
  EXPECT_EQ(Segment::open(n.name).error().code(), Errc::not_found);
  EXPECT_EQ(a.root<Root>()->a, 42u);  // still mapped
  EXPECT_EQ(Segment::remove(n.name).error().code(), Errc::not_found);
}

// ---- validation of damaged and foreign files, each opened in a child that must exit normally ----

// Runs Segment::open(name) in a child and returns (errc, message) via the exit code / a pipe.
struct OpenOutcome {
  bool child_ok = false;
  Errc code = Errc::ok;
  std::string message;
};

OpenOutcome open_in_child(const std::string& name) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  const pid_t pid = test::fork_child([&] {
    close(fds[0]);
    auto s = Segment::open(name);
    std::string out = s ? std::string("0|")
                        : std::to_string(static_cast<int>(s.error().code())) + "|" + s.error().message();
    if (write(fds[1], out.data(), out.size()) < 0) return 3;
    // Touch every byte a successful open claims to map: it must not fault.
    if (s) {
      volatile std::uint8_t sum = 0;
      for (std::size_t i = 0; i < s->size(); i += 4096) sum = sum + static_cast<std::uint8_t>(s->base()[i]);
    }
    return 0;
  });
  close(fds[1]);
  std::string buf;
  char tmp[512];
  ssize_t k;
  while ((k = read(fds[0], tmp, sizeof tmp)) > 0) buf.append(tmp, static_cast<std::size_t>(k));
  close(fds[0]);
  auto r = test::wait_child(pid);
  OpenOutcome o;
  o.child_ok = r.exited && r.code == 0;
  const auto bar = buf.find('|');
  if (bar != std::string::npos) {
    o.code = static_cast<Errc>(std::stoi(buf.substr(0, bar)));
    o.message = buf.substr(bar + 1);
  }
  return o;
}

void write_file(const std::string& name, const std::string& bytes) {
  const int fd = shm_open(segment_shm_name(name).c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  close(fd);
}

// Edit the header of a published segment through a raw mapping.
template <typename F>
void edit_header(const std::string& name, F f) {
  const int fd = shm_open(segment_shm_name(name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  f(*static_cast<SegmentHeader*>(p));
  munmap(p, 4096);
  close(fd);
}

TEST(SegmentValidationTest, GarbageIsForeign) {
  ScopedName n(unique_name("garbage"));
  std::string junk(8192, '\0');
  for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>((i * 131 + 7) & 0xff);
  write_file(n.name, junk);
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::foreign_segment) << o.message;
  EXPECT_NE(o.message.find("not a shmbus segment"), std::string::npos) << o.message;
}

TEST(SegmentValidationTest, EmptyFileIsIncomplete) {
  ScopedName n(unique_name("empty"));
  write_file(n.name, "");
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::incomplete) << o.message;
}

TEST(SegmentValidationTest, FileSmallerThanHeaderIsTruncated) {
  ScopedName n(unique_name("tiny"));
  write_file(n.name, std::string(100, 'x'));
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::truncated) << o.message;
  EXPECT_NE(o.message.find("100 bytes"), std::string::npos) << o.message;
}

TEST(SegmentValidationTest, TruncatedFileIsRefusedWithoutFault) {
  ScopedName n(unique_name("trunc"));
  { Segment a = make_published(n.name, 1 << 16); }
  const int fd = shm_open(segment_shm_name(n.name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 8192), 0);
  close(fd);
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::truncated) << o.message;
  EXPECT_NE(o.message.find("65536"), std::string::npos) << o.message;
  EXPECT_NE(o.message.find("8192"), std::string::npos) << o.message;
}

TEST(SegmentValidationTest, GrownFileIsRefused) {
  ScopedName n(unique_name("grown"));
  { Segment a = make_published(n.name, 1 << 16); }
  const int fd = shm_open(segment_shm_name(n.name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 1 << 17), 0);
  close(fd);
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::truncated) << o.message;
}

TEST(SegmentValidationTest, OtherLayoutVersionNamesBothVersions) {
  ScopedName n(unique_name("ver"));
  { Segment a = make_published(n.name); }
  edit_header(n.name, [](SegmentHeader& h) { h.layout_version = 99; });
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::version_mismatch) << o.message;
  EXPECT_NE(o.message.find("version 99"), std::string::npos) << o.message;
  EXPECT_NE(o.message.find("version " + std::to_string(kLayoutVersion)), std::string::npos) << o.message;
}

TEST(SegmentValidationTest, OtherAbiHashIsRefused) {
  ScopedName n(unique_name("abi"));
  { Segment a = make_published(n.name); }
  edit_header(n.name, [](SegmentHeader& h) { h.abi_hash ^= 1; });
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::version_mismatch) << o.message;
  EXPECT_NE(o.message.find("ABI hash"), std::string::npos) << o.message;
}

TEST(SegmentValidationTest, RootOffsetOutsideIsRefused) {
  ScopedName n(unique_name("root"));
  { Segment a = make_published(n.name); }
  edit_header(n.name, [](SegmentHeader& h) { h.root_offset = 1ULL << 40; });
  auto o = open_in_child(n.name);
  EXPECT_TRUE(o.child_ok);
  EXPECT_EQ(o.code, Errc::truncated) << o.message;
}

TEST(SegmentValidationTest, WrongKindIsRefused) {
  ScopedName n(unique_name("kind"));
  Segment a = make_published(n.name);
  auto b = Segment::open(n.name, {.expect_kind = "pool"});
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), Errc::foreign_segment);
  EXPECT_NE(b.error().message().find("\"test\""), std::string::npos) << b.error().message();
}

TEST(SegmentTest, AbiHashIsStableAndNonZero) {
  EXPECT_NE(abi_hash(), 0u);
  EXPECT_EQ(abi_hash(), abi_hash());
}

}  // namespace
}  // namespace shmbus
