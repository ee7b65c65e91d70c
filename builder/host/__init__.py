"""A running host: commands over ssh, drift audit, health probe.

Where each part lives:

- ``remote``        ``Remote``: the one command runner (ssh), for VMs and servers alike
- ``audit``         does a running host still match its image's manifest (``observation``:
                    the script it runs there and the parsing of its output)
- ``probe``         after a rebuild: the right image, healthy, the dashboard answering
- ``health``        which failed units count against an image (services vs pipelines)
"""
