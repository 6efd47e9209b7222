/* netlink DIR: netlink sockets a program keeps open.
 *
 * Two NETLINK_ROUTE sockets: one bound by the kernel (autobind, port id =
 * the process's PID) that joins the link and IPv4 address groups and sets
 * NETLINK_EXT_ACK; one bound to an explicit port id, connected to the
 * kernel, with no groups. Each records its port id, groups and option. On
 * SIGTERM each checks them again, then asks the kernel for the list of
 * links (RTM_GETLINK dump) and expects an answer naming `lo`: the socket
 * still talks to the kernel. With STASIS_TEST_CORRUPT=1 the first socket
 * leaves a group before the checks. */
#include "wl.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

struct rec {
	int fd;
	uint32_t portid;
	uint32_t groups[4];
	int ext_ack;
};

static uint32_t portid_of(int fd)
{
	struct sockaddr_nl a;
	socklen_t len = sizeof(a);
	memset(&a, 0, sizeof(a));
	if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		return 0;
	return a.nl_pid;
}

static void snapshot(struct rec *r)
{
	socklen_t len = sizeof(r->groups);
	memset(r->groups, 0, sizeof(r->groups));
	if (getsockopt(r->fd, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, r->groups, &len) != 0)
		wl_fail("NETLINK_LIST_MEMBERSHIPS: %s", strerror(errno));
	len = sizeof(r->ext_ack);
	if (getsockopt(r->fd, SOL_NETLINK, NETLINK_EXT_ACK, &r->ext_ack, &len) != 0)
		wl_fail("NETLINK_EXT_ACK: %s", strerror(errno));
	r->portid = portid_of(r->fd);
}

static void compare(const char *name, struct rec *before)
{
	struct rec now = { .fd = before->fd };
	snapshot(&now);
	if (now.portid != before->portid)
		wl_fail("%s: port id %u, was %u", name, now.portid, before->portid);
	if (memcmp(now.groups, before->groups, sizeof(now.groups)) != 0)
		wl_fail("%s: groups %#x, were %#x", name, now.groups[0], before->groups[0]);
	if (now.ext_ack != before->ext_ack)
		wl_fail("%s: NETLINK_EXT_ACK %d, was %d", name, now.ext_ack, before->ext_ack);
}

/* Asks for every link and looks for `lo` in the answer. */
static void ask_links(const char *name, int fd)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req;
	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 77;
	req.i.ifi_family = AF_UNSPEC;
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&k, sizeof(k)) != (ssize_t)sizeof(req)) {
		wl_fail("%s: sending RTM_GETLINK: %s", name, strerror(errno));
		return;
	}
	static char buf[1 << 16];
	int found = 0, done = 0;
	while (!done) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n <= 0) {
			wl_fail("%s: receiving the links: %s", name, n < 0 ? strerror(errno) : "end of file");
			return;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_seq != 77)
				continue;
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			int len = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof(*ifi));
			for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
				if (a->rta_type == IFLA_IFNAME && !strcmp(RTA_DATA(a), "lo"))
					found = 1;
		}
	}
	if (!found)
		wl_fail("%s: the kernel's list of links has no lo", name);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv, 1);
	struct rec a = { 0 }, b = { 0 };
	a.fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	b.fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (a.fd < 0 || b.fd < 0) {
		perror("socket");
		return 2;
	}
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	if (bind(a.fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		perror("bind a");
		return 2;
	}
	int g = RTNLGRP_IPV4_IFADDR, one = 1;
	if (setsockopt(a.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) != 0 ||
	    setsockopt(a.fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one)) != 0) {
		perror("setsockopt");
		return 2;
	}
	struct sockaddr_nl sb = { .nl_family = AF_NETLINK, .nl_pid = 0x5a5a0000u + (uint32_t)getpid() };
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (bind(b.fd, (struct sockaddr *)&sb, sizeof(sb)) != 0 ||
	    connect(b.fd, (struct sockaddr *)&kernel, sizeof(kernel)) != 0) {
		perror("bind/connect b");
		return 2;
	}
	snapshot(&a);
	snapshot(&b);
	if (a.portid != (uint32_t)getpid())
		wl_fail("autobound port id %u is not the PID %d", a.portid, getpid());
	if (!(a.groups[0] & (1u << (RTNLGRP_LINK - 1))) || !(a.groups[0] & (1u << (RTNLGRP_IPV4_IFADDR - 1))))
		wl_fail("groups %#x lack link and ipv4 address", a.groups[0]);
	wl_write("ready", "%u %u\n", a.portid, b.portid);
	wl_wait_term();
	if (wl_corrupt())
		setsockopt(a.fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &g, sizeof(g));
	compare("autobound socket", &a);
	compare("bound socket", &b);
	ask_links("autobound socket", a.fd);
	ask_links("bound socket", b.fd);
	return wl_finish();
}
