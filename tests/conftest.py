"""Settings every suite shares.

The tests load on-host programs (mkosi.extra) and build scripts
(mkosi.postinst.d) straight from the source tree; a __pycache__ written there
would be carried into the next image or run by mkosi as a postinst script, so
no bytecode is written.
"""

import sys

sys.dont_write_bytecode = True
