"""medrecon-ct: the CT plugin."""
