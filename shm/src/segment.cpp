#include "shmbus/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

#include "shmbus/fault.hpp"
#include "shmbus/owner.hpp"

namespace shmbus {
namespace {

constexpr std::size_t kMaxNameLen = 200;

std::size_t page_size() {
  static const std::size_t p = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string segment_shm_name(std::string_view name) {
  return "/shmbus." + std::string(name);
}

Status Segment::check_name(std::string_view name) {
  if (name.empty()) return Error(Errc::invalid_argument, "segment name is empty");
  if (name.size() > kMaxNameLen)
    return Error(Errc::invalid_argument, "segment name is " + std::to_string(name.size()) +
                                             " bytes; the limit is " + std::to_string(kMaxNameLen));
  if (name[0] == '.')
    return Error(Errc::invalid_argument, "segment name " + quoted(name) + " starts with '.'");
  for (std::size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-') continue;
    char buf[160];
    std::snprintf(buf, sizeof buf, "segment name %s: byte 0x%02x at offset %zu is not one of [A-Za-z0-9._-]",
                  quoted(name).c_str(), c, i);
    return Error(Errc::invalid_argument, buf);
  }
  return {};
}

Result<Segment> Segment::create(std::string_view name, const CreateOptions& options) {
  if (auto ok = check_name(name); !ok) return ok.error();
  if (options.kind.size() >= kSegmentKindLen)
    return Error(Errc::invalid_argument, "segment kind " + quoted(options.kind) + " is longer than " +
                                             std::to_string(kSegmentKindLen - 1) + " bytes");
  if (options.size < sizeof(SegmentHeader))
    return Error(Errc::invalid_argument, "segment size " + std::to_string(options.size) +
                                             " is smaller than its header (" +
                                             std::to_string(sizeof(SegmentHeader)) + " bytes)");
  const std::size_t size = (options.size + page_size() - 1) / page_size() * page_size();
  const std::string shm_name = segment_shm_name(name);

  Fd fd{::shm_open(shm_name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)};
  if (fd.fd < 0) {
    const int err = errno;
    if (err == EEXIST)
      return Error(Errc::already_exists, "segment " + quoted(name) + " already exists (/dev/shm" + shm_name +
                                             "); open it, or remove it if its creator is gone");
    return Error::from_errno(err, "cannot create segment " + quoted(name));
  }
  // From here on a failure must not leave a half-made file behind.
  auto fail = [&](int err, const std::string& what) -> Error {
    ::shm_unlink(shm_name.c_str());
    return Error::from_errno(err, what + " for segment " + quoted(name));
  };
  // fchmod: shm_open applied the umask to 0600; set the mode the caller asked for exactly.
  if (options.group != static_cast<gid_t>(-1) && ::fchown(fd.fd, static_cast<uid_t>(-1), options.group) != 0)
    return fail(errno, "fchown to group " + std::to_string(options.group));
  if (::fchmod(fd.fd, options.mode) != 0) return fail(errno, "fchmod");
  // posix_fallocate reserves the pages now: a full /dev/shm is ENOSPC here, never a SIGBUS on first touch.
  if (int err = ::posix_fallocate(fd.fd, 0, static_cast<off_t>(size)); err != 0)
    return fail(err, "posix_fallocate of " + std::to_string(size) + " bytes");
  SHMBUS_FAULT_POINT("segment.create.after_size");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.fd, 0);
  if (p == MAP_FAILED) return fail(errno, "mmap");

  auto* h = static_cast<SegmentHeader*>(p);
  // The file is zero-filled, so magic is 0 ("incomplete") until publish().
  h->layout_version = kLayoutVersion;
  h->header_size = sizeof(SegmentHeader);
  h->abi_hash = abi_hash();
  h->total_size = size;
  const OwnerId self = OwnerId::self();
  h->creator_pid = self.pid();
  h->creator_start = self.start();
  h->root_offset = 0;
  h->arena_used = sizeof(SegmentHeader);
  std::memcpy(h->kind, options.kind.data(), options.kind.size());
  SHMBUS_FAULT_POINT("segment.create.before_magic");
  return Segment(std::string(name), static_cast<std::byte*>(p), size, true);
}

void Segment::publish() noexcept {
  SHMBUS_ASSERT(building_);
  // R-SEG: pairs with A-SEG in open(): everything written while building is visible with the magic.
  header().magic.store(kSegmentMagic, std::memory_order_release);
  building_ = false;
}

bool Segment::published() const {
  return base_ != nullptr && header().magic.load(std::memory_order_acquire) == kSegmentMagic;
}

Result<Segment> Segment::open(std::string_view name, const OpenOptions& options) {
  if (auto ok = check_name(name); !ok) return ok.error();
  const std::string shm_name = segment_shm_name(name);
  Fd fd{::shm_open(shm_name.c_str(), (options.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0)};
  if (fd.fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return Error(Errc::not_found, "segment " + quoted(name) + " does not exist (/dev/shm" + shm_name + ")");
    return Error::from_errno(err, "cannot open segment " + quoted(name));
  }
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) return Error::from_errno(errno, "fstat of segment " + quoted(name));
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size == 0)
    return Error(
        Errc::incomplete,
        "segment " + quoted(name) + " is empty: its creator has not sized it yet, or died while creating it");
  if (file_size < sizeof(SegmentHeader))
    return Error(Errc::truncated, "segment " + quoted(name) + " is " + std::to_string(file_size) +
                                      " bytes, smaller than a segment header (" +
                                      std::to_string(sizeof(SegmentHeader)) + ")");
  // Map only what fstat says exists: no access beyond it can fault.
  const int prot = PROT_READ | (options.writable ? PROT_WRITE : 0);
  void* p = ::mmap(nullptr, file_size, prot, MAP_SHARED, fd.fd, 0);
  if (p == MAP_FAILED) return Error::from_errno(errno, "mmap of segment " + quoted(name));
  Segment seg(std::string(name), static_cast<std::byte*>(p), file_size, false);
  const SegmentHeader& h = seg.header();

  // A-SEG: pairs with R-SEG in publish().
  const std::uint64_t magic = h.magic.load(std::memory_order_acquire);
  if (magic == 0)
    return Error(Errc::incomplete, "segment " + quoted(name) +
                                       " is not published: its creator is still building it or died while "
                                       "doing so (creator pid " +
                                       std::to_string(h.creator_pid) + ")");
  if (magic != kSegmentMagic) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(magic));
    return Error(Errc::foreign_segment, "segment " + quoted(name) + " is not a shmbus segment (magic " + buf +
                                            ", expected 0x" + "31535542" + "4d485321)");
  }
  if (h.layout_version != kLayoutVersion)
    return Error(Errc::version_mismatch,
                 "segment " + quoted(name) + " has layout version " + std::to_string(h.layout_version) +
                     "; this library reads version " + std::to_string(kLayoutVersion));
  if (h.header_size != sizeof(SegmentHeader) || h.abi_hash != abi_hash()) {
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "ABI hash 0x%016llx (header %u bytes); this library has 0x%016llx (%zu bytes)",
                  static_cast<unsigned long long>(h.abi_hash), h.header_size,
                  static_cast<unsigned long long>(abi_hash()), sizeof(SegmentHeader));
    return Error(Errc::version_mismatch,
                 "segment " + quoted(name) + " was made by an incompatible build: " + buf);
  }
  if (h.total_size != file_size)
    return Error(Errc::truncated, "segment " + quoted(name) + " header says " + std::to_string(h.total_size) +
                                      " bytes but the file has " + std::to_string(file_size));
  if (!options.expect_kind.empty() &&
      std::string_view(h.kind, strnlen(h.kind, kSegmentKindLen)) != options.expect_kind)
    return Error(Errc::foreign_segment,
                 "segment " + quoted(name) + " holds a " +
                     quoted(std::string_view(h.kind, strnlen(h.kind, kSegmentKindLen))) + ", expected a " +
                     quoted(options.expect_kind));
  if (h.root_offset != 0 && !seg.in_bounds(h.root_offset, 1))
    return Error(Errc::truncated, "segment " + quoted(name) + " root offset " +
                                      std::to_string(h.root_offset) + " is outside its " +
                                      std::to_string(file_size) + " bytes");
  return seg;
}

Status Segment::remove(std::string_view name) {
  if (auto ok = check_name(name); !ok) return ok.error();
  if (::shm_unlink(segment_shm_name(name).c_str()) != 0) {
    const int err = errno;
    if (err == ENOENT) return Error(Errc::not_found, "segment " + quoted(name) + " does not exist");
    return Error::from_errno(err, "cannot remove segment " + quoted(name));
  }
  return {};
}

Segment::Segment(Segment&& other) noexcept
    : name_(std::move(other.name_)), base_(other.base_), size_(other.size_), building_(other.building_) {
  other.base_ = nullptr;
  other.size_ = 0;
}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    unmap();
    name_ = std::move(other.name_);
    base_ = other.base_;
    size_ = other.size_;
    building_ = other.building_;
    other.base_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

Segment::~Segment() {
  unmap();
}

void Segment::unmap() noexcept {
  if (base_ != nullptr) ::munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
}

Result<std::uint64_t> Segment::allocate_bytes(std::size_t bytes, std::size_t align) {
  SHMBUS_ASSERT(building_);
  SHMBUS_ASSERT(align != 0 && (align & (align - 1)) == 0);
  SegmentHeader& h = header();
  const std::uint64_t start = (h.arena_used + align - 1) & ~static_cast<std::uint64_t>(align - 1);
  if (start > size_ || bytes > size_ - start)
    return Error(Errc::no_space, "segment " + quoted(name_) + ": " + std::to_string(bytes) +
                                     " bytes asked, " + std::to_string(start > size_ ? 0 : size_ - start) +
                                     " left of " + std::to_string(size_));
  h.arena_used = start + bytes;
  return start;
}

std::size_t Segment::arena_left() const {
  return size_ - header().arena_used;
}

}  // namespace shmbus
