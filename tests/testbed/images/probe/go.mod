// The testbed's tiny in-image tool (pause, memory eater, securityContext report); standard
// library only. Built by tests/testbed/images/build.sh into the images the node component loads.
module testbed.local/probe

go 1.25.0
