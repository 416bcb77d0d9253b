// Turning a configured backend address ("host:port") into the addresses it stands for now, so the
// gateway can keep one channel per compute pod behind a DNS name (a Kubernetes headless Service).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ultramem::services {

// The "ip:port" addresses (IPv6 as "[ip]:port") that one "host:port" target stands for now.
// An error means "unknown right now" (the caller keeps what it knew), never "no backend".
// Called from one thread at a time; may block (DNS).
using AddressResolver =
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& target)>;

// True for targets used exactly as given, never resolved: "unix:" and other gRPC URI schemes
// ("dns:///...", "ipv4:...", "scheme://..."), literal IPv4/IPv6 addresses ("10.0.0.1:7100",
// "[::1]:7100"), and anything that is not "host:port" (left for gRPC to judge).
bool IsFixedAddress(const std::string& target);

// The AddressResolver used by default: getaddrinfo (IPv4 and IPv6, TCP) on the host of a
// "host:port" target. Sorted, without duplicates, never empty when OK. InvalidArgument for a target
// that is not "host:port" with a numeric port; NotFound when the name has no address;
// Unavailable for a temporary failure (DNS unreachable). Blocks for as long as the system's
// resolver does (resolv.conf timeout and attempts).
absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const std::string& target);

}  // namespace ultramem::services
