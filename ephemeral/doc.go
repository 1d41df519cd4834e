// Package ephemeral holds Ferrite's ephemeral image: the agent (ephemeral/agent), the image
// build (build.sh, the initramfs /init and udhcpc script in initramfs/) and a test that boots
// the image in QEMU against a fake metadata server.
package ephemeral
