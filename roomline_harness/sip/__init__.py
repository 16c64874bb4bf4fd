"""SIP test peers and helpers: pcap generation, SIPp scenarios, the pjsua2 test phone."""
