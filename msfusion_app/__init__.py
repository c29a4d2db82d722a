"""What the Flower apps share and the method does not need: the run settings (one source for every
knob), the wire protocol between ServerApp and ClientApp, and the run directory.

``msfusion_core`` never imports this package; ``server_app`` and ``client_app`` do."""
