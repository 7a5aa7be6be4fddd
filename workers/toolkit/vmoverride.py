"""The vmoverride tarball as the overlay stage writes it and the assemble stage reads it."""

# The edits that must be applied to files already in the image travel inside the tarball under
# this name; the assemble stage applies them and removes it.
EDITS_MEMBER = ".gentoo-farm/overlay-edits.json"
