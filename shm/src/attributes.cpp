// The attribute codec (attributes.hpp).
#include "shmbus/attributes.hpp"

#include <cstring>

namespace shmbus {
namespace {

std::size_t value_size(const AttrValue& v) {
  switch (v.type()) {
    case AttrValue::Type::string:
      return v.as_string().size();
    case AttrValue::Type::integer:
    case AttrValue::Type::real:
      return 8;
    case AttrValue::Type::boolean:
      return 1;
    case AttrValue::Type::none:
      return 0;
  }
  return 0;
}

// Walks the entries of `in`, calling f(key, value) until it returns false; a malformed entry ends it.
template <typename F>
void walk(const std::byte* in, std::size_t size, F&& f) noexcept {
  std::size_t n = 0;
  while (n + 4 <= size) {
    const auto type = static_cast<std::uint8_t>(in[n]);
    const auto klen = static_cast<std::uint8_t>(in[n + 1]);
    std::uint16_t vlen;
    std::memcpy(&vlen, in + n + 2, 2);
    if (n + 4 + std::size_t{klen} + vlen > size) return;
    const std::byte* v = in + n + 4 + klen;
    AttrValue value;
    switch (static_cast<AttrValue::Type>(type)) {
      case AttrValue::Type::string:
        value = AttrValue(std::string_view(reinterpret_cast<const char*>(v), vlen));
        break;
      case AttrValue::Type::integer: {
        if (vlen != 8) return;
        std::int64_t i;
        std::memcpy(&i, v, 8);
        value = AttrValue(i);
        break;
      }
      case AttrValue::Type::real: {
        if (vlen != 8) return;
        double d;
        std::memcpy(&d, v, 8);
        value = AttrValue(d);
        break;
      }
      case AttrValue::Type::boolean:
        if (vlen != 1) return;
        value = AttrValue(static_cast<std::uint8_t>(v[0]) != 0);
        break;
      default:
        return;
    }
    if (!f(std::string_view(reinterpret_cast<const char*>(in + n + 4), klen), value)) return;
    n += 4 + klen + vlen;
  }
}

}  // namespace

std::size_t encoded_attrs_size(AttrList attrs, std::string* why) {
  std::size_t n = 0;
  for (const Attr& a : attrs) {
    if (a.key.empty() || a.key.size() > 255) {
      if (why) *why = "attribute key \"" + std::string(a.key) + "\" must be 1 to 255 bytes";
      return 0;
    }
    if (a.value.type() == AttrValue::Type::none) {
      if (why) *why = "attribute \"" + std::string(a.key) + "\" has no value";
      return 0;
    }
    const std::size_t vlen = value_size(a.value);
    if (vlen > 0xffff) {
      if (why) *why = "attribute \"" + std::string(a.key) + "\": value longer than 65535 bytes";
      return 0;
    }
    n += 4 + a.key.size() + vlen;
  }
  return n;
}

std::size_t encode_attrs(AttrList attrs, std::byte* out) noexcept {
  std::size_t n = 0;
  for (const Attr& a : attrs) {
    const std::size_t vlen = value_size(a.value);
    out[n] = static_cast<std::byte>(a.value.type());
    out[n + 1] = static_cast<std::byte>(a.key.size());
    const auto v16 = static_cast<std::uint16_t>(vlen);
    std::memcpy(out + n + 2, &v16, 2);
    std::memcpy(out + n + 4, a.key.data(), a.key.size());
    std::byte* v = out + n + 4 + a.key.size();
    switch (a.value.type()) {
      case AttrValue::Type::string:
        std::memcpy(v, a.value.as_string().data(), vlen);
        break;
      case AttrValue::Type::integer: {
        const std::int64_t i = a.value.as_int();
        std::memcpy(v, &i, 8);
        break;
      }
      case AttrValue::Type::real: {
        const double d = a.value.as_real();
        std::memcpy(v, &d, 8);
        break;
      }
      case AttrValue::Type::boolean:
        v[0] = std::byte{a.value.as_bool() ? std::uint8_t{1} : std::uint8_t{0}};
        break;
      case AttrValue::Type::none:
        break;
    }
    n += 4 + a.key.size() + vlen;
  }
  return n;
}

std::vector<Attr> decode_attrs(const std::byte* in, std::size_t size) {
  std::vector<Attr> out;
  walk(in, size, [&](std::string_view k, AttrValue v) {
    out.push_back({k, v});
    return true;
  });
  return out;
}

std::optional<AttrValue> find_attr(const std::byte* in, std::size_t size, std::string_view key) noexcept {
  std::optional<AttrValue> r;
  walk(in, size, [&](std::string_view k, AttrValue v) {
    if (k != key) return true;
    r = v;
    return false;
  });
  return r;
}

}  // namespace shmbus
